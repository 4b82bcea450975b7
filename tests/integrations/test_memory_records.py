"""Records carry their own context, in the shapes the default model was trained to remember."""

from memagent.integration import records as memory_records


def test_tool_result_is_one_json_line_of_name_arguments_and_result_fields():
    record = memory_records.tool_result("weather", {"city": "Oslo"}, '{"temp_c": 12, "sky": "rain"}')
    assert record == '{"tool": "weather", "city": "Oslo", "temp_c": 12, "sky": "rain"}'


def test_a_plain_result_or_input_gets_its_own_key():
    assert memory_records.tool_result("search", "cheap flights", "3 found") == (
        '{"tool": "search", "input": "cheap flights", "output": "3 found"}'
    )
    assert memory_records.tool_result("now", None, ["12:00"]) == '{"tool": "now", "output": ["12:00"]}'


def test_turns_read_as_who_said_what():
    record = memory_records.turn("I'm allergic to peanuts.", "Noted.")
    assert record == "User: I'm allergic to peanuts.\nAssistant: Noted."
