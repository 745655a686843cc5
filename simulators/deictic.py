"""What a user calls the thing in the picture ("buy two of these", "帮我买两个这个"), replaced by the
product the picture shows, so the command parser of the language reads a plain command.

English: the first "this", "these", "of those", "it"... becomes the product's name ("buy two AA
batteries"). Chinese: the first demonstrative (这 or 那 with a classifier: 这个, 这些, 这款, 这种,
这瓶, 这两包, 这俩; or a count before it: 两个这个, 三瓶这个; or a count after it: 这个来两包) becomes
"<count><measure word><name>" ("两包五号电池"): the count as said (一 when none was), the measure word
the product is sold by when the user said a general one (个, 些, 款, 种, 件), else the one said, for
the parser to check against the product's own (这瓶 of batteries sold by the 包 is refused, never
read as packs).
"""

from __future__ import annotations

import re

from .catalog import Product
from .command_parser_zh import CONNECTORS, LOCALE, MEASURE_WORDS, TRAILS

_ENGLISH = re.compile(r"\b(?:of )?(?:these|this|those|that|them|it)\b", re.IGNORECASE)
_GENERAL = "个些款种件"
"""Classifiers that name no measure: the product's own measure word stands for them."""
_NUM = r"(?:\d+|[零〇一二两三四五六七八九十百千万]+|俩)"
_MEASURE = "".join(sorted(MEASURE_WORDS | set(_GENERAL)))
_CHINESE = re.compile(
    rf"(?:(?P<qty>{_NUM})(?P<before>[{_MEASURE}])?|(?P<bare>[{_MEASURE.replace('把', '')}]))?"  # 把这个: not a measure
    rf"[这那](?:(?P<qty_after>{_NUM})(?P<after>[{_MEASURE}])?|(?P<own>[{_MEASURE}]))"
    r"(?:东西|商品|产品)?"
)
_COUNT_AFTER = re.compile(
    rf"^(?:给我来|帮我买|再来|我要|来|买|要|拿)?(?P<qty>{_NUM})(?P<measure>[{_MEASURE}])?"
    rf"(?=$|{CONNECTORS.pattern}|{'|'.join(TRAILS)})"
)
"""A count said after the demonstrative: 这个来两包, 这个买三个吧."""
_VERB_AFTER = re.compile(
    rf"^(?:给我)?(?:都要|都买|买下来|买下|买了|要了|下单|买|要|订)(?=$|{CONNECTORS.pattern}|{'|'.join(TRAILS)})"
)
"""A verb said after the demonstrative, with no count: 这个买了, 把这个买下来."""


def resolve(text: str, product: Product, locale: str) -> str:
    """`text` with its first deictic word replaced by `product`, in the parser's words for
    `locale` (en-US or zh-CN); unchanged when it has none (the words name the product themselves),
    or when its counts or measure words disagree (两瓶这包: the parser then does not understand)."""
    local = product.named(locale)
    name = local.aliases[0] if local.aliases else local.name.split(",")[0].split("，")[0]
    if locale != LOCALE:
        return _ENGLISH.sub(name, text, count=1)
    found = _CHINESE.search(text)
    if found is None:
        return text
    counts = [found["qty"], found["qty_after"]]
    measures = [found["before"], found["bare"], found["after"], found["own"]]
    end = found.end()
    later = _COUNT_AFTER.match(text[end:]) if not any(counts) else None
    if later is not None:
        counts.append(later["qty"])
        measures.append(later["measure"])
        end += later.end()
    elif verb := _VERB_AFTER.match(text[end:]):
        end += verb.end()
    start = found.start() - 1 if text[: found.start()].endswith("把") else found.start()  # 把这个买了
    said = {count for count in counts if count}
    specific = {measure for measure in measures if measure and measure not in _GENERAL}
    if len(said) > 1 or len(specific) > 1:
        return text
    count = said.pop() if said else "一"
    if count == "俩":
        count = "两"
    measure = specific.pop() if specific else local.unit
    return f"{text[:start]}{count}{measure}{name}{text[end:]}"


def has_deictic(text: str, locale: str) -> bool:
    """Whether `text` calls something "this" or "这个" (it needs a picture to be read)."""
    return bool((_CHINESE if locale == LOCALE else _ENGLISH).search(text))
