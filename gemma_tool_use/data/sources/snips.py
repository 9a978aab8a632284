"""SNIPS NLU benchmark (github.com/sonos/nlu-benchmark, 2017-06-custom-intent-engines; CC0 1.0).

train_<Intent>_full.json, one per intent (7): {"<Intent>": [{"data": [{"text": ...},
{"text": ..., "entity": "<slot>"}, ...]}, ...]}: a user utterance cut into spans, some tagged
with a slot. The validate_<Intent>.json files are SNIPS's benchmark split and are not read.

Each intent becomes a tool (INTENTS: a snake_case name, a hand-written description) whose
parameters are the slots the loaded files tag for that intent, all strings (with a hand-written
description, else the slot name in words). An utterance is the user turn (its spans joined) and
its call is that intent with {slot: tagged text}. Judgement calls:
  * No enums: slot values are verbatim spans of the request ("chillier", "top-rated", "tune"),
    surface wording rather than a closed set of categories, even where few distinct values
    occur; an enum would teach the model to reject a paraphrase the data simply lacks.
  * `required`: the slots tagged in at least REQUIRED_SHARE of an intent's utterances (in the
    full data: playlist, rating_value, object_name of SearchCreativeWork, all at 100%; every
    other slot is under 76%). A call lacking a required slot is then dropped (args_violate_schema).
  * Tools offered: the intent's own plus 0-1 other intent (MAX_OTHER_TOOLS: the token budget), chosen and ordered by a sha256 draw
    of the row (Draw), so loads are deterministic whatever the file order.
  * No-call rows: NO_CALL_SHARE of the utterances (by the same draw) are offered one other
    intent only and answered with rows.REFUSAL: natural requests no offered tool serves.
    SearchCreativeWork and SearchScreeningEvent ("find the movie X") are too close to stand
    in for each other there (_NEAR).
  * A slot tagged twice with different text in one utterance: dropped (malformed_row).
  * Files that are not UTF-8 clean: surrogate pairs written as two 3-byte sequences (CESU-8,
    e.g. one emoji in PlayMusic) are re-encoded; any other undecodable byte becomes U+FFFD and
    its utterance is dropped (malformed_row). Both are logged as warnings.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.rows import REFUSAL
from gemma_tool_use.data.sources.common import Dialogue, Draw, RowError, convert_rows

log = logging.getLogger(__name__)

NO_CALL_SHARE = 0.15
REQUIRED_SHARE = 0.95
MAX_OTHER_TOOLS = 1  # a SNIPS intent schema is ~300 tokens: rows must fit the cpu recipe's 768-token cap

INTENTS = {  # upstream intent -> (tool name, description)
    "AddToPlaylist": ("add_to_playlist", "Add a song, album or artist to one of the user's playlists."),
    "BookRestaurant": ("book_restaurant", "Book a table at a restaurant, bar or other place to eat."),
    "GetWeather": ("get_weather", "Get the weather forecast or conditions for a place and time."),
    "PlayMusic": ("play_music", "Play music by artist, song, album, genre, playlist or year on a music service."),
    "RateBook": ("rate_book", "Give a book or other written work a rating out of a number of stars or points."),
    "SearchCreativeWork": (
        "search_creative_work",
        "Find a creative work such as a book, song, album, TV show, movie, game or painting by its title.",
    ),
    "SearchScreeningEvent": (
        "search_screening_event",
        "Find movie showtimes and which films are playing at cinemas.",
    ),
}
_NEAR = {frozenset(("SearchCreativeWork", "SearchScreeningEvent"))}

_SLOTS = {
    "album": "Title of an album.",
    "artist": "Name of the artist or band.",
    "best_rating": 'Top of the rating scale (e.g. "6" in "4 out of 6").',
    "city": "City.",
    "condition_description": "A weather condition to check, e.g. rain, snow, humidity.",
    "condition_temperature": "A temperature condition to check, e.g. hot, cold, colder.",
    "country": "Country.",
    "cuisine": "Cuisine, e.g. Italian, Japanese.",
    "current_location": 'Set when the user means where they are now (e.g. "here").',
    "entity_name": "Title of the song, album or other item to add.",
    "facility": "A facility the place should have, e.g. wifi, parking, outdoor seating.",
    "genre": "Music genre.",
    "geographic_poi": "A landmark or natural place, e.g. a national park or a mountain.",
    "location_name": "Name of the cinema or cinema chain.",
    "movie_name": "Title of the movie.",
    "movie_type": "Kind of movie, e.g. animated movies, films.",
    "music_item": "Kind of music item, e.g. song, album, track, artist.",
    "object_location_type": "Kind of venue, e.g. cinema, movie theatre.",
    "object_name": "Title of the work.",
    "object_part_of_series_type": "Kind of series the work belongs to, e.g. series, saga, chronicle.",
    "object_select": 'Which item is meant, by position: e.g. "this", "current", "next", "last".',
    "object_type": "Kind of work, e.g. book, novel, song, TV show, game.",
    "party_size_description": 'Who the party is, when not given as a number (e.g. "me and my wife").',
    "party_size_number": "Number of people in the party.",
    "playlist": "Name of the playlist.",
    "playlist_owner": 'Whose playlist it is, as the user says it (e.g. "my", "Sarah\'s").',
    "poi": "A point of interest the place should be near.",
    "rating_unit": "Unit of the rating, e.g. stars, points.",
    "rating_value": "The rating given, as the user says it.",
    "restaurant_name": "Name of a specific restaurant.",
    "restaurant_type": "Kind of place to book, e.g. restaurant, bar, pub, diner.",
    "served_dish": "A dish the place should serve.",
    "service": "Music service to play from, e.g. Spotify, YouTube.",
    "sort": 'Ranking preference, e.g. "top-rated", "popular", "newest".',
    "spatial_relation": 'Where relative to a place, e.g. "near", "close by", "in the area".',
    "state": "State or region.",
    "timeRange": 'When, as the user says it: a date, a time or a period such as "tomorrow".',
    "track": "Title of a song or track.",
    "year": "Year or decade of the music.",
}
_INTENT_SLOTS = {  # where one slot name means something else per intent
    ("AddToPlaylist", "playlist"): "Name of the playlist to add to.",
    ("PlayMusic", "music_item"): "Kind of item to play, e.g. song, album, track, playlist.",
    ("PlayMusic", "playlist"): "Name of a playlist to play.",
    ("RateBook", "object_name"): "Title of the book or work to rate.",
    ("RateBook", "object_type"): "Kind of work, e.g. book, novel, essay.",
    ("SearchCreativeWork", "object_name"): "Title of the work to find.",
    ("SearchCreativeWork", "object_type"): "Kind of work, e.g. song, album, TV show, game, painting.",
    ("SearchScreeningEvent", "object_type"): "What to look up, e.g. movie schedules, movie times.",
    ("SearchScreeningEvent", "timeRange"): "When the showing should be, as the user says it.",
}


_CESU_PAIR = re.compile(rb"\xed[\xa0-\xaf][\x80-\xbf]\xed[\xb0-\xbf][\x80-\xbf]")


def _cesu_to_utf8(m: re.Match) -> bytes:
    return m.group().decode("utf-8", "surrogatepass").encode("utf-16-le", "surrogatepass").decode("utf-16-le").encode()


def read_text(path: Path) -> str:
    """A file's text: UTF-8; else CESU-8 surrogate pairs re-encoded and any other undecodable
    byte sequence replaced by U+FFFD (counted in a warning)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        first = e
    fixed, pairs = _CESU_PAIR.subn(_cesu_to_utf8, data)
    text = fixed.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - fixed.count("\ufffd".encode())
    log.warning(
        "%s: not UTF-8 (%s): %d surrogate pairs written as CESU-8 re-encoded, %d undecodable byte "
        "sequences replaced by U+FFFD (their utterances are dropped)",
        path,
        first,
        pairs,
        replaced,
    )
    return text


def _intent_file(path: Path) -> tuple[str, list]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        data = json.loads(read_text(path))
    except ValueError as e:
        raise DataError(f"{path}: not readable as JSON: {e}") from e
    if not isinstance(data, dict) or len(data) != 1 or not isinstance(next(iter(data.values())), list):
        keys = f" with keys {list(data)[:3]}" if isinstance(data, dict) else ""
        raise DataError(f'{path}: expected {{"<Intent>": [utterances]}}, got a JSON {type(data).__name__}{keys}')
    intent, items = next(iter(data.items()))
    if intent not in INTENTS:
        raise DataError(f"{path}: unknown SNIPS intent {intent!r} (known: {', '.join(INTENTS)})")
    return intent, items


# ------------------------------------------------------------------------------- rows


def parse_utterance(item: Any) -> tuple[str, dict[str, str]]:
    """(user text, {slot: tagged text}) of one upstream utterance."""
    if not isinstance(item, dict):
        raise RowError("malformed_row", f"an utterance is a {type(item).__name__}, not an object")
    spans = item.get("data")
    if not isinstance(spans, list) or not all(isinstance(s, dict) and isinstance(s.get("text"), str) for s in spans):
        raise RowError("missing_field", "an utterance needs 'data': a list of {'text': str, 'entity'?: str}")
    text = "".join(s["text"] for s in spans).strip()
    if not text:
        raise RowError("empty", "an empty utterance")
    if "\ufffd" in text:
        raise RowError("malformed_row", f"undecodable bytes (U+FFFD) in the utterance: {text[:80]!r}")
    args: dict[str, str] = {}
    for s in spans:
        slot = s.get("entity")
        if slot is None:
            continue
        if not isinstance(slot, str) or not slot.strip():
            raise RowError("missing_field", f"a span's entity is {slot!r}, not a slot name")
        value = s["text"].strip()
        if not value:
            raise RowError("empty", f"slot {slot!r} tags blank text")
        if args.setdefault(slot, value) != value:
            raise RowError(
                "malformed_row", f"slot {slot!r} tagged twice with different text: {args[slot]!r}, {value!r}"
            )
    return text, args


def slot_description(intent: str, slot: str) -> str:
    """The hand-written description of a slot, else its name in words ("timeRange" -> "Time range.")."""
    if known := _INTENT_SLOTS.get((intent, slot)) or _SLOTS.get(slot):
        return known
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", slot).replace("_", " ").strip().lower()
    return f"{words[:1].upper()}{words[1:]}."


def intent_tool(intent: str, slot_counts: Counter, utterances: int) -> dict:
    """The tool of one intent: its slots (most often tagged first), the near-universal ones required."""
    name, description = INTENTS[intent]
    slots = sorted(slot_counts, key=lambda s: (-slot_counts[s], s))
    params: dict = {
        "type": "object",
        "properties": {s: {"type": "string", "description": slot_description(intent, s)} for s in slots},
    }
    required = [s for s in slots if slot_counts[s] >= REQUIRED_SHARE * utterances]
    if required:
        params["required"] = required
    return {"name": name, "description": description, "parameters": params}


def _copy(tool: dict) -> dict:
    """A tool of intent_tool's shape, copied down to its (string) leaves, so that no two rows
    share a dict; copy.deepcopy or a JSON round trip took most of the load time."""
    params = tool["parameters"]
    out = {**params, "properties": {k: dict(v) for k, v in params["properties"].items()}}
    if "required" in params:
        out["required"] = list(params["required"])
    return {**tool, "parameters": out}


def convert(row: dict, tools: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    """One parsed utterance -> (tools offered, [user, model]); `tools`: intent -> its tool."""
    gold, text = row["intent"], row["text"]
    draw = Draw("snips/v1", gold, text)
    others = sorted(i for i in tools if i != gold)
    stand_ins = [i for i in others if frozenset((gold, i)) not in _NEAR]
    d = Dialogue()
    d.user(text)
    if stand_ins and draw.unit() < NO_CALL_SHARE:
        offered = draw.sample(stand_ins, 1 + draw.below(min(MAX_OTHER_TOOLS, len(stand_ins))))
        d.model(REFUSAL)
    else:
        offered = [gold] + draw.sample(others, draw.below(min(MAX_OTHER_TOOLS, len(others)) + 1))
        d.model(calls=[{"name": INTENTS[gold][0], "args": dict(row["args"])}])
    return [_copy(tools[i]) for i in draw.shuffled(offered)], d.messages


def load(source: str, paths: list[Path], report: LoadReport, strict: bool = False) -> list[dict]:
    """Rows of the train_<Intent>_full.json files (any order; rows come out by intent name)."""
    by_intent: dict[str, list] = {}
    for path in paths:
        intent, items = _intent_file(path)
        if intent in by_intent:
            raise DataError(f"{path}: a second file for intent {intent!r}")
        by_intent[intent] = items
    rows: list = []
    slot_counts = {i: Counter() for i in by_intent}
    utterances = Counter()
    for intent in sorted(by_intent):
        for index, item in enumerate(by_intent[intent]):
            row_id = f"{intent}:{index}"
            try:
                text, args = parse_utterance(item)
            except RowError as e:
                e.row_id = row_id
                rows.append(e)
                continue
            slot_counts[intent].update(list(args))
            utterances[intent] += 1
            rows.append({"id": row_id, "intent": intent, "text": text, "args": args})
    tools = {i: intent_tool(i, slot_counts[i], utterances[i]) for i in by_intent}
    return convert_rows(rows, functools.partial(convert, tools=tools), source=source, report=report, strict=strict)
