"""Measuring music and models, as plain functions: likelihood (`evaluate`), continuations scored
against the real next bars (`evaluate --continuation`), musical features of pieces compared
between sets (`stats`), and the n-gram baseline."""
