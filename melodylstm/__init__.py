"""melodylstm: train a stacked LSTM on your own MIDI, generate, continue and play music."""

__version__ = "0.1.0"
