"""A device's voice pipeline: audio sources, endpointing, the ASR engines and their grammars, speech
out, the reply phrases and checks, the wake word and the voice assistant (docs/voice.md)."""
