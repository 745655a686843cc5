"""Fuzzing the SDK's decoders, the flow layer and the audio stream: the targets (`targets.py`), run
coverage-guided by atheris (`run.py`, `./dev fuzz [SECONDS]`) from the seed corpus in `corpus/`."""
