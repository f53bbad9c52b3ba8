"""An upstream emulator for OpenAI, Anthropic and Gemini: exact wire formats, scenarios on demand.

    emu = Emulator()
    await emu.start()                    # http://127.0.0.1:PORT
    openai.AsyncOpenAI(base_url=emu.base_url("openai") + "/v1", api_key="k")
    ...
    await emu.stop()

See tests/emulator/README.md for the scenarios and the wire details.
"""

from tests.emulator.delivery import RecordedResponse
from tests.emulator.scenarios import SCENARIO_HEADER, Scenario, ScenarioError, parse_scenario
from tests.emulator.server import Emulator, RecordedRequest

__all__ = [
    "SCENARIO_HEADER",
    "Emulator",
    "RecordedRequest",
    "RecordedResponse",
    "Scenario",
    "ScenarioError",
    "parse_scenario",
]
