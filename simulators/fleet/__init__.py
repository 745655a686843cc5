"""`device-sdk bench fleet`: the fleet load generator (`generator`), its device processes (`devices`),
the gateway processes it runs (`gateways`) and its figures (`report`)."""
