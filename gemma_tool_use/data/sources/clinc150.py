"""CLINC150 (github.com/clinc/oos-eval, data/data_full.json and data/domains.json; CC BY 3.0;
Larson et al., "An Evaluation Dataset for Intent Classification and Out-of-Scope Prediction",
EMNLP 2019).

data_full.json: {"train"|"val"|"test": [[utterance, intent], ...], "oos_train"|"oos_val"|
"oos_test": [[utterance, "oos"], ...]}; domains.json: {domain: [intent, ...]}: 150 intents in
10 domains, no slots. Only train, val, oos_train and oos_val are read: test and oos_test are the
benchmark split.

Each intent becomes a parameterless tool named after it, with a hand-written description
(DESCRIPTIONS). The rows teach when *not* to call, with natural requests (drawn per utterance
by a sha256 draw, common.Draw, so loads are deterministic):
  * out-of-scope utterances: offered 3-5 intents of one domain -> rows.REFUSAL;
  * in-scope utterances, (1 - CALL_SHARE) of them: offered 3-5 intents of other domains only
    -> REFUSAL;
  * the other CALL_SHARE: their own intent plus 2-4 others (any domain) -> one call of it with
    {} arguments, so that a parameterless tool is no cue to refuse.
Judgement calls: a few intents of different domains overlap (a "meeting_schedule" request is
served by "calendar", "time" in a city by "timezone", "apr" by "interest_rate"; _NEAR): such a
neighbour is never offered with the intent, neither as a wrong tool in a refusal row nor as a
distractor beside the call. Upstream label noise (e.g. a weather question labelled
replacement_card_duration) is kept as is.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.rows import REFUSAL
from gemma_tool_use.data.sources.common import Dialogue, Draw, RowError, convert_rows

SPLITS = ("train", "val", "oos_train", "oos_val")  # never "test" / "oos_test"
CALL_SHARE = 0.25

_NEAR = [
    ("meeting_schedule", "calendar"),
    ("schedule_meeting", "calendar_update"),
    ("time", "timezone"),
    ("apr", "interest_rate"),
    ("freeze_account", "report_lost_card"),
    ("account_blocked", "card_declined"),
    ("cancel", "cancel_reservation"),
    ("reminder_update", "alarm"),
    ("translate", "change_language"),
]

DESCRIPTIONS = {
    # banking
    "freeze_account": "Freeze the user's bank account so no transactions can be made on it.",
    "routing": "Look up the routing number of the user's bank account.",
    "pin_change": "Change or reset the PIN of the user's bank account or card.",
    "bill_due": "Tell the user when one of their bills is due.",
    "pay_bill": "Pay one of the user's bills from their bank account.",
    "account_blocked": "Explain why the user's bank account is blocked or on hold.",
    "interest_rate": "Tell the interest rate of the user's bank account.",
    "min_payment": "Tell the minimum payment due on one of the user's bills or loans.",
    "bill_balance": "Tell how much the user owes on a bill.",
    "transfer": "Transfer money between the user's accounts or to another person.",
    "order_checks": "Order new checks or a checkbook for the user's bank account.",
    "balance": "Tell the balance of the user's bank account.",
    "spending_history": "Tell how much the user has spent over a period, overall or at a merchant or category.",
    "transactions": "List the recent transactions on the user's account or card.",
    "report_fraud": "Report a fraudulent charge or suspicious activity on the user's account.",
    # credit_cards
    "replacement_card_duration": "Tell how long it takes to receive a replacement card.",
    "expiration_date": "Tell when the user's card expires.",
    "damaged_card": "Report the user's card as damaged and request a new one.",
    "improve_credit_score": "Give advice on how the user can improve their credit score.",
    "report_lost_card": "Report the user's credit or debit card as lost or stolen.",
    "card_declined": "Explain why the user's card was declined.",
    "credit_limit_change": "Request a change to the credit limit of the user's credit card.",
    "apr": "Tell the APR (annual percentage rate) of the user's credit card.",
    "redeem_rewards": "Explain how to redeem the reward points of the user's credit card.",
    "credit_limit": "Tell the credit limit of the user's credit card.",
    "rewards_balance": "Tell how many reward points the user has on their credit card.",
    "application_status": "Check the status of the user's credit card application.",
    "credit_score": "Look up the user's credit score.",
    "new_card": "Apply for a new credit card.",
    "international_fees": "Tell whether the user's card charges fees on foreign transactions.",
    # kitchen_and_dining
    "food_last": "Tell how long a food keeps before it goes bad.",
    "confirm_reservation": "Confirm that the user has a reservation at a restaurant.",
    "how_busy": "Tell how busy a restaurant is and how long the wait for a table is.",
    "ingredients_list": "List the ingredients needed to make a dish.",
    "calories": "Tell how many calories a food has.",
    "nutrition_info": "Give the nutrition facts of a food and how healthy it is.",
    "recipe": "Find a recipe or cooking instructions for a dish.",
    "restaurant_reviews": "Summarize the reviews of a restaurant or of its dishes.",
    "restaurant_reservation": "Book a table at a restaurant.",
    "meal_suggestion": "Suggest a meal or a dish to cook or eat.",
    "restaurant_suggestion": "Suggest a restaurant to eat at.",
    "cancel_reservation": "Cancel a restaurant reservation.",
    "ingredient_substitution": "Tell whether and how one ingredient can replace another in a recipe.",
    "cook_time": "Tell how long a dish takes to cook.",
    "accept_reservations": "Tell whether a restaurant takes reservations.",
    # home
    "what_song": "Identify the song that is playing now.",
    "play_music": "Play music by an artist, of a genre or by title.",
    "todo_list_update": "Add items to or remove items from the user's to-do list.",
    "reminder": "Read out the user's current reminders.",
    "reminder_update": "Create, change or delete a reminder for the user.",
    "calendar_update": "Add, change or remove an event on the user's calendar.",
    "order_status": "Track the status of the user's order or package delivery.",
    "update_playlist": "Add a song to or remove a song from one of the user's playlists.",
    "shopping_list": "Read out what is on the user's shopping list.",
    "calendar": "Tell what events the user has on their calendar for a day.",
    "next_song": "Skip to the next song.",
    "order": "Order a product for the user from an online store.",
    "todo_list": "Read out what is on the user's to-do list.",
    "shopping_list_update": "Add items to or remove items from the user's shopping list.",
    "smart_home": "Control or check smart home devices such as lights, thermostat, locks or appliances.",
    # auto_and_commute
    "current_location": "Tell the user where they are right now.",
    "oil_change_when": "Tell when the user's car next needs an oil change.",
    "oil_change_how": "Explain how to change a car's oil.",
    "uber": "Book an Uber ride.",
    "traffic": "Report the traffic on a route or near a place.",
    "tire_pressure": "Check the air pressure of the user's car tires.",
    "schedule_maintenance": "Schedule maintenance or a service appointment for the user's car.",
    "gas": "Tell how much fuel is left in the user's car.",
    "mpg": "Tell the fuel economy (miles per gallon) of the user's car.",
    "distance": "Tell how far away a place is or how long it takes to get there.",
    "directions": "Give directions to a place.",
    "last_maintenance": "Tell when the user's car last had maintenance or an oil change.",
    "gas_type": "Tell which type of fuel the user's car needs.",
    "tire_change": "Tell when the tires of the user's car need replacing.",
    "jump_start": "Explain how to jump-start a car with a dead battery.",
    # travel
    "plug_type": "Tell which power plug type a country uses and whether an adapter is needed.",
    "travel_notification": "Tell the user's bank about upcoming travel dates and destinations so their card keeps working.",
    "translate": "Translate a word or phrase into another language.",
    "flight_status": "Check the status of a flight: delays, boarding or arrival time.",
    "international_visa": "Tell whether the user needs a visa to visit a country.",
    "timezone": "Tell the time zone of a place.",
    "exchange_rate": "Tell the exchange rate between two currencies.",
    "travel_suggestion": "Suggest things to do and see at a travel destination.",
    "travel_alert": "Report travel alerts or warnings for a country.",
    "vaccines": "Tell which vaccinations are recommended before travelling to a country.",
    "lost_luggage": "Report and track luggage lost on a flight.",
    "book_flight": "Search for and book a flight.",
    "book_hotel": "Search for and book a hotel room.",
    "carry_on": "Tell an airline's carry-on baggage allowance.",
    "car_rental": "Reserve a rental car.",
    # utility
    "weather": "Get the weather forecast for a place.",
    "alarm": "Set, change or check an alarm.",
    "date": "Tell today's date or the date of a given day.",
    "find_phone": "Help the user find their phone, for example by making it ring.",
    "share_location": "Share the user's current location with other people.",
    "timer": "Set a timer.",
    "make_call": "Place a phone call.",
    "calculator": "Do an arithmetic calculation.",
    "definition": "Give the definition of a word or phrase.",
    "measurement_conversion": "Convert a measurement from one unit to another.",
    "flip_coin": "Flip a coin and tell the result.",
    "spelling": "Spell a word.",
    "time": "Tell the current time, here or in a given place.",
    "roll_dice": "Roll dice and tell the result.",
    "text": "Send a text message to a contact.",
    # work
    "pto_request_status": "Check the status of the user's time-off request.",
    "next_holiday": "Tell when the next public or company holiday is.",
    "insurance_change": "Change the user's insurance plan or start a new one.",
    "insurance": "Describe the user's health insurance and benefits.",
    "meeting_schedule": "Tell when the user's meetings are scheduled.",
    "payday": "Tell when the user's next paycheck arrives.",
    "taxes": "Tell how much tax the user owes or has paid.",
    "income": "Tell the user's income or salary.",
    "rollover_401k": "Explain how to roll over or transfer the user's 401(k).",
    "pto_balance": "Tell how many days of paid time off the user has left.",
    "pto_request": "Submit a request for paid time off.",
    "w2": "Tell where the user can get their W-2 tax form.",
    "schedule_meeting": "Check meeting room availability and schedule a meeting.",
    "direct_deposit": "Set up direct deposit of the user's paycheck.",
    "pto_used": "Tell how many days of paid time off the user has used.",
    # small_talk
    "who_made_you": "Tell who created the assistant.",
    "meaning_of_life": "Give the assistant's answer to the meaning of life.",
    "who_do_you_work_for": "Tell who the assistant works for.",
    "do_you_have_pets": "Answer whether the assistant has pets.",
    "what_are_your_hobbies": "Tell the assistant's hobbies.",
    "fun_fact": "Tell a fun fact, optionally about a topic.",
    "what_is_your_name": "Tell the assistant's name.",
    "where_are_you_from": "Tell where the assistant comes from.",
    "goodbye": "Say goodbye to the user.",
    "thank_you": "Respond to the user's thanks.",
    "greeting": "Greet the user and say how the assistant is doing.",
    "tell_joke": "Tell a joke.",
    "are_you_a_bot": "Answer whether the assistant is a bot or a person.",
    "how_old_are_you": "Tell the assistant's age.",
    "what_can_i_ask_you": "Tell the user what the assistant can help with.",
    # meta
    "change_speed": "Change how fast the assistant speaks.",
    "user_name": "Tell the name the assistant uses for the user.",
    "whisper_mode": "Turn the assistant's whisper mode on or off.",
    "yes": "Answer yes to the assistant's last question.",
    "change_volume": "Change the assistant's speaking volume.",
    "no": "Answer no to the assistant's last question.",
    "change_language": "Change the language the assistant speaks.",
    "repeat": "Repeat the assistant's last response.",
    "change_accent": "Change the accent the assistant speaks with.",
    "cancel": "Cancel the request the assistant is working on.",
    "sync_device": "Connect the assistant to one of the user's devices, such as a phone.",
    "change_user_name": "Change the name the assistant uses for the user.",
    "change_ai_name": "Change the assistant's name.",
    "reset_settings": "Reset the assistant's settings to their defaults.",
    "maybe": "Answer maybe (unsure) to the assistant's last question.",
}


def tool(intent: str) -> dict:
    return {"name": intent, "description": DESCRIPTIONS[intent], "parameters": {"type": "object", "properties": {}}}


class Catalog:
    """The intents by domain, and per intent the pools of tools a row may offer beside it."""

    def __init__(self, domains: dict[str, list[str]]):
        self.domains = {d: sorted(set(intents)) for d, intents in sorted(domains.items())}
        self.domain_of = {i: d for d, intents in self.domains.items() for i in intents}
        near: dict[str, set] = {}
        for a, b in _NEAR:
            near.setdefault(a, set()).add(b)
            near.setdefault(b, set()).add(a)
        every = sorted(self.domain_of)
        # call rows: any other intent; refusal rows: other domains' intents only; neither a near one
        self.beside = {i: [j for j in every if j != i and j not in near.get(i, ())] for i in every}
        self.elsewhere = {i: [j for j in self.beside[i] if self.domain_of[j] != self.domain_of[i]] for i in every}


def convert(row: dict, catalog: Catalog) -> tuple[list[dict], list[dict]]:
    """One [utterance, intent] of `row["split"]` -> (tools offered, [user, model])."""
    item = row["item"]
    if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
        raise RowError("missing_field", f"a row is not [utterance, intent]: {item!r:.80}")
    text, intent = item[0].strip(), item[1]
    if not text:
        raise RowError("empty", "an empty utterance")
    draw, d = Draw("clinc150/v1", text), Dialogue()
    d.user(text)
    if row["split"].startswith("oos"):
        if intent != "oos":
            raise RowError("missing_field", f"an out-of-scope split row labelled {intent!r}")
        names = list(catalog.domains)
        intents = catalog.domains[names[draw.below(len(names))]]
        offered = draw.sample(intents, 3 + draw.below(3))
        d.model(REFUSAL)
    elif intent not in catalog.domain_of:
        raise RowError("missing_field", f"intent {intent!r} is in no domain of domains.json")
    elif draw.unit() < CALL_SHARE:
        offered = [intent] + draw.sample(catalog.beside[intent], 2 + draw.below(3))
        d.model(calls=[{"name": intent, "args": {}}])
    else:
        offered = draw.sample(catalog.elsewhere[intent], 3 + draw.below(3))
        d.model(REFUSAL)
    return [tool(i) for i in draw.shuffled(offered)], d.messages


def _json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path}: not readable as JSON: {e}") from e


def load(source: str, paths: list[Path], report: LoadReport, strict: bool = False) -> list[dict]:
    """Rows of CLINC150's train, val, oos_train and oos_val splits; paths = [data_full.json, domains.json]."""
    data, domains = _json(paths[0]), _json(paths[1])
    if not (
        isinstance(domains, dict)
        and domains
        and all(isinstance(v, list) and v and all(isinstance(i, str) for i in v) for v in domains.values())
    ):
        raise DataError(f"{paths[1]}: expected {{domain: [intent, ...]}}")
    if missing := sorted({i for v in domains.values() for i in v} - set(DESCRIPTIONS)):
        raise DataError(f"{paths[1]}: intents without a description in clinc150.DESCRIPTIONS: {missing}")
    absent = [s for s in SPLITS if not isinstance(data, dict) or not isinstance(data.get(s), list)]
    if absent:
        raise DataError(f"{paths[0]}: expected a JSON object with lists under {', '.join(SPLITS)}; missing: {absent}")
    rows = [
        {"id": f"{split}:{i}", "split": split, "item": item} for split in SPLITS for i, item in enumerate(data[split])
    ]
    convert_one = functools.partial(convert, catalog=Catalog(domains))
    return convert_rows(rows, convert_one, source=source, report=report, strict=strict)
