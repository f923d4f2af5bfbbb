"""The parts of tests/integration/test_render_property.py: strategies, the oracle written
from the README, and the checks of the rendered files."""
