"""melodylstm: train a stacked LSTM on your own MIDI, generate, continue and play music."""

__version__ = "0.1.0"

__all__ = ["Generator", "Song", "Tokenizer", "TokenizerConfig", "__version__"]


def __getattr__(name):
    # lazy, so that `melodylstm --help` and `import melodylstm` stay fast
    if name == "Generator":
        from .generate import Generator

        return Generator
    if name == "Song":
        from .midi import Song

        return Song
    if name in ("Tokenizer", "TokenizerConfig"):
        from . import tokenizer

        return getattr(tokenizer, name)
    raise AttributeError(name)
