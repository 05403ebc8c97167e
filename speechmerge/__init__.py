"""speechmerge: merge per-(language, task) fine-tuned Whisper models (LoRS-Merging and peers)."""

__version__ = "0.1.0"
