"""What the user is shown and what they sign: a device's key, the signed mandate, the read-back,
lens and sheet text with their digest, and the lens card (docs/consent.md)."""
