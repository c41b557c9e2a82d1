"""The inference wing: the one engine, the network contract, tiles, the upscaler and the one batch path (docs/development.md)."""
