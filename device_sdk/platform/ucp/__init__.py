"""The platform's UCP adapter: a UCP merchant behind our checkout, AP2 mandates from a device's confirmation."""
