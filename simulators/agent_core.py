"""The reference agent core: the demo catalog and a command parser behind the `AgentCore` interface.

It stands in for the real shopping agent; the SDK reaches it only through the bus, hosted by
`device_sdk.platform.agent.AgentWorker`.
"""

from __future__ import annotations

from device_sdk.media.images import ImageStore
from device_sdk.protocol.errors import AgentError, ErrorCode
from device_sdk.protocol.fields import new_id, now
from device_sdk.protocol.messages import AgentRequest, CheckoutProposal, ProposalLine

from .catalog import MARKETPLACE, Catalog, demo_catalog
from .command_parser import CommandParser, ParsedLine
from .command_parser_zh import ChineseCommandParser
from .deictic import has_deictic, resolve
from .photos import read_tag

__all__ = ["MARKETPLACE", "CatalogAgent", "proposal_locale"]


def proposal_locale(locale: str) -> str:
    """The locale this agent answers a request of `locale` in: zh-CN for any Chinese (zh, zh-Hans,
    zh-SG...), en-US for any English (en-GB, en-IN...); another language is not understood."""
    language = locale.split("-")[0].lower()
    if language == "zh":
        return "zh-CN"
    if language == "en":
        return "en-US"
    raise AgentError(f"this agent reads English and Chinese, not {locale}", ErrorCode.NOT_UNDERSTOOD)


class CatalogAgent:
    """Proposes a cart from a catalog for each request; one seller is also the payee, else the marketplace."""

    def __init__(self, catalog: Catalog | None = None, *, images: ImageStore | None = None) -> None:
        self.catalog = catalog or demo_catalog()
        self.parser = CommandParser(self.catalog)
        self.chinese = ChineseCommandParser(self.catalog)
        self.images = images

    def parse(self, text: str, locale: str) -> list[ParsedLine]:
        """The command's lines, read by the parser of the request's language."""
        if proposal_locale(locale) == "zh-CN":
            return self.chinese.parse(text)
        return self.parser.parse(text)

    async def propose(self, request: AgentRequest) -> CheckoutProposal:
        locale = proposal_locale(request.locale)
        if request.image_ref:
            text = await self._looked_at(request)
        elif locale == "zh-CN" and has_deictic(request.text, locale):
            raise AgentError(f"“{request.text}”：没有照片，不知道是哪件商品", ErrorCode.NOT_UNDERSTOOD)
        else:
            text = request.text
        lines = [
            ProposalLine(
                sku=parsed.product.sku,
                name=parsed.product.named(locale).name,
                qty=parsed.qty,
                unit=parsed.product.named(locale).unit,
                unit_price_minor=parsed.product.price_minor,
                line_total_minor=parsed.qty * parsed.product.price_minor,
                seller=self.catalog.merchant(parsed.product.merchant_id, locale),
                category=parsed.product.category,
                sponsored=self.catalog.sponsored(parsed.product.sku),
            )
            for parsed in self.parse(text, locale)
        ]
        return CheckoutProposal(
            checkout_id=new_id("co"),
            request_id=request.request_id,
            device_id=request.device_id,
            session_id=request.session_id,
            merchant=self.catalog.payee({line.seller.id for line in lines}, locale),
            currency=self.catalog.currency,
            lines=lines,
            total_minor=sum(line.line_total_minor for line in lines),
            created_at=now(),
            locale=None if locale == "en-US" else locale,
        )

    async def _looked_at(self, request: AgentRequest) -> str:
        """The request with "this", "these", "这个" or "两个这个" replaced by the product in the picture
        (`deictic.resolve`). The stand-in for vision: the simulator's photos carry their SKU in a tag
        strip (`photos.read_tag`)."""
        jpeg = await self.images.wait(request.image_ref, 5.0) if self.images and request.image_ref else None
        if jpeg is None:
            raise AgentError(f"the image {request.image_ref} never arrived", ErrorCode.NOT_UNDERSTOOD)
        sku = read_tag(jpeg)
        product = self.catalog.product(sku) if sku else None
        if product is None:
            raise AgentError("nothing I know is in that picture", ErrorCode.ITEM_NOT_FOUND)
        return resolve(request.text, product, proposal_locale(request.locale))
