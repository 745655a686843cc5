"""What devices send besides words: audio chunks on the wire and the streams they make, and camera
images (metadata stripped, referenced by hash, kept for the agent)."""
