"""The mixer: file-adaptive experts (match model, stride hint, column expert, adaptive weights)
blended with the network's byte distribution. Numpy only: the serving path imports it.
"""

from obf.mixer.mix import TAIL, Hints, Mixer, MixerStats, RowHints, Tail, file_hints, fit_mixer, mixer_of

__all__ = [
    "file_hints",
    "fit_mixer",
    "Hints",
    "Mixer",
    "mixer_of",
    "MixerStats",
    "RowHints",
    "TAIL",
    "Tail",
]
