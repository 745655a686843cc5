"""Pronunciations for recognition: the engine's own dictionary first, espeak-ng for the rest.

pocketsphinx refuses a grammar that holds a word its dictionary lacks ("earbuds", "sanitizer",
"ramen", "yoghurt" are missing from the CMU dictionary in its wheel). espeak-ng's letter-to-sound
rules give such words a phoneme string (`espeak-ng -q --ipa`), which `ipa_to_arpabet` maps onto
the 39 ARPAbet phones of the CMU dictionary that the en-us acoustic model was trained on.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from device_sdk.protocol.errors import ErrorCode, VoiceError

from .tts import espeak_available

# Longest symbols first; vowels followed by ɹ keep the r as its own phone (CMU style).
_IPA: dict[str, tuple[str, ...]] = {
    "aɪə": ("AY", "ER"), "aʊə": ("AW", "ER"), "ɑːɹ": ("AA", "R"), "ɔːɹ": ("AO", "R"), "oːɹ": ("AO", "R"),
    "ɚɹ": ("ER",), "ɛɹ": ("EH", "R"), "ɪɹ": ("IH", "R"), "ʊɹ": ("UH", "R"), "əl": ("AH", "L"),
    "aɪ": ("AY",), "aʊ": ("AW",), "eɪ": ("EY",), "oʊ": ("OW",), "ɔɪ": ("OY",), "tʃ": ("CH",), "dʒ": ("JH",),
    "ɑː": ("AA",), "ɔː": ("AO",), "iː": ("IY",), "uː": ("UW",), "ɜː": ("ER",), "oː": ("OW",), "ɐ": ("AH",),
    "ɑ": ("AA",), "æ": ("AE",), "ʌ": ("AH",), "ə": ("AH",), "ɔ": ("AO",), "ɛ": ("EH",), "ɚ": ("ER",),
    "ɝ": ("ER",), "ɪ": ("IH",), "ᵻ": ("IH",), "i": ("IY",), "ʊ": ("UH",), "u": ("UW",), "e": ("EH",),
    "o": ("OW",), "a": ("AA",), "ɒ": ("AA",), "b": ("B",), "d": ("D",), "ð": ("DH",), "f": ("F",),
    "ɡ": ("G",), "g": ("G",), "h": ("HH",), "k": ("K",), "l": ("L",), "m": ("M",), "n": ("N",), "ŋ": ("NG",),
    "p": ("P",), "ɹ": ("R",), "r": ("R",), "s": ("S",), "ʃ": ("SH",), "t": ("T",), "θ": ("TH",), "v": ("V",),
    "w": ("W",), "j": ("Y",), "z": ("Z",), "ʒ": ("ZH",), "ɾ": ("T",), "ʔ": ("T",), "x": ("K",), "ɬ": ("L",),
}  # fmt: skip
_LONGEST = max(len(symbol) for symbol in _IPA)
_IGNORED = set("ˈˌː.‿-_ \u0329\u032f\u0361")


class LexiconError(VoiceError):
    """A word has no pronunciation: not in the dictionary, and espeak-ng is absent or gave none."""

    code = ErrorCode.NO_PRONUNCIATION


def ipa_to_arpabet(ipa: str) -> list[str]:
    """espeak-ng's IPA for one word as ARPAbet phones (stress dropped); unknown symbols skipped."""
    phones: list[str] = []
    i = 0
    while i < len(ipa):
        for size in range(_LONGEST, 0, -1):
            mapped = _IPA.get(ipa[i : i + size])
            if mapped is not None:
                phones.extend(mapped)
                i += size
                break
        else:
            i += 1  # stress, length and tie marks, or a symbol with no ARPAbet phone
    return phones


def espeak_ipa(words: list[str], voice: str = "en-us") -> list[str]:
    """One IPA string per word (espeak-ng reads one word per line)."""
    if not words:
        return []
    if not espeak_available():
        raise LexiconError(f"no pronunciation for {', '.join(words)}: espeak-ng is not installed")
    done = subprocess.run(
        ["espeak-ng", "-q", "--ipa", "-v", voice, "--stdin"],
        input="\n".join(f"{w}." for w in words),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or len(lines) != len(words):
        raise LexiconError(f"espeak-ng gave {len(lines)} pronunciations for {len(words)} words: {done.stderr.strip()}")
    return lines


def pronunciations(words: list[str], voice: str = "en-us") -> dict[str, str]:
    """ARPAbet pronunciations ("S AE N IH T AY Z ER") for words missing from a dictionary."""
    found: dict[str, str] = {}
    for word, ipa in zip(words, espeak_ipa(words, voice), strict=True):
        phones = ipa_to_arpabet(ipa.replace(" ", ""))
        if not phones:
            raise LexiconError(f"espeak-ng gave no usable phones for {word!r} ({ipa!r})")
        found[word] = " ".join(phones)
    return found


@functools.cache
def english_words() -> frozenset[str]:
    """The words of the CMU pronouncing dictionary in pocketsphinx's wheel (about 134,000)."""
    import pocketsphinx

    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    with path.open(encoding="utf-8") as entries:
        return frozenset(line.split(" ", 1)[0].split("(")[0] for line in entries if line.strip())
