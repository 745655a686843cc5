"""Minor units with each currency's own exponent (ISO 4217), never a division by 100.

UCP carries every amount as an integer in the currency's minor unit: 1290 is 12.90 CNY, but 1290 JPY
is 1290 yen and 1290 KWD is 1.290 dinar. A currency missing from the table is refused: its amounts
cannot be read back to the user.
"""

from __future__ import annotations

from device_sdk.protocol.errors import CheckoutError, ErrorCode

EXPONENTS: dict[str, int] = {
    # no minor unit
    "JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "UGX": 0, "PYG": 0, "XAF": 0, "XOF": 0,
    # hundredths
    "CNY": 2, "USD": 2, "EUR": 2, "GBP": 2, "HKD": 2, "SGD": 2, "AUD": 2, "CAD": 2, "CHF": 2,
    "TWD": 2, "THB": 2, "MYR": 2, "INR": 2, "NZD": 2, "SEK": 2, "NOK": 2, "DKK": 2, "AED": 2,
    "SAR": 2, "MXN": 2, "BRL": 2, "PHP": 2, "IDR": 2, "PLN": 2, "CZK": 2, "ZAR": 2, "TRY": 2,
    # thousandths
    "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3, "LYD": 3, "IQD": 3,
}  # fmt: skip
"""ISO 4217 minor-unit exponents of the currencies the adapter reads back."""


def exponent(currency: str) -> int:
    """The minor-unit exponent of `currency`, or `CheckoutError` (`unknown_currency`)."""
    try:
        return EXPONENTS[currency]
    except KeyError:
        raise CheckoutError(
            f"unknown currency {currency!r}: no ISO 4217 exponent", ErrorCode.UNKNOWN_CURRENCY
        ) from None


def format_minor(amount: int, currency: str) -> str:
    """`amount` minor units as a decimal string in `currency`'s major unit: (1290, "KWD") -> "1.290 KWD"."""
    places = exponent(currency)
    sign, digits = ("-" if amount < 0 else ""), str(abs(amount)).rjust(places + 1, "0")
    whole = digits[: len(digits) - places] if places else digits
    return f"{sign}{whole}{'.' + digits[-places:] if places else ''} {currency}"
