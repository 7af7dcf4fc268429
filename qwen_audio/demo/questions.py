"""Spoken questions with short answers, for the voice-chat task (the question is the audio).

About 600 questions from a few small tables: arithmetic, counting, days and months, colours of
familiar things, opposites, animal sounds and legs, capital cities, everyday facts, and a little
small talk about the assistant itself. The answer repeats the question's subject ("Three plus four
is seven."), so a right answer needs the words heard, not a guess from the question type.
A stable ~10% of the factual questions (never the small talk) are held out for validation.
"""

from __future__ import annotations

import hashlib

from qwen_audio.demo.sounds import number_word as nw

DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = ("January February March April May June July August September October November "
          "December").split()  # fmt: skip
COLOURS = {"the sky": "blue", "grass": "green", "snow": "white", "a banana": "yellow",
           "a tomato": "red", "coal": "black", "chocolate": "brown", "a lemon": "yellow",
           "milk": "white", "a strawberry": "red", "a carrot": "orange", "an orange": "orange",
           "a frog": "green", "the sun": "yellow", "a cherry": "red", "a polar bear": "white",
           "a crow": "black", "a lime": "green", "a pumpkin": "orange", "an elephant": "gray"}  # fmt: skip
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad",
             "old": "new", "early": "late", "light": "dark", "open": "closed", "full": "empty",
             "tall": "short", "hard": "soft", "wet": "dry", "loud": "quiet", "rich": "poor",
             "clean": "dirty", "day": "night", "left": "right", "in": "out", "yes": "no",
             "heavy": "light", "young": "old", "strong": "weak", "first": "last", "push": "pull",
             "win": "lose", "buy": "sell", "black": "white", "thick": "thin", "near": "far"}  # fmt: skip
ANIMAL_SOUNDS = {"dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa",
                 "pig": "oink", "owl": "hoot", "lion": "roar", "bee": "buzz", "snake": "hiss",
                 "horse": "neigh", "mouse": "squeak", "frog": "croak", "donkey": "hee-haw",
                 "wolf": "howl", "goose": "honk"}  # fmt: skip
LEGS = {"spider": 8, "dog": 4, "bird": 2, "cat": 4, "ant": 6, "horse": 4, "chicken": 2,
        "bee": 6, "cow": 4, "duck": 2, "octopus": 8, "beetle": 6, "snake": 0, "fish": 0,
        "person": 2, "frog": 4, "crab": 10, "kangaroo": 2, "butterfly": 6, "elephant": 4}  # fmt: skip
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid",
            "Germany": "Berlin", "England": "London", "Canada": "Ottawa", "Egypt": "Cairo",
            "China": "Beijing", "Russia": "Moscow", "Greece": "Athens", "Kenya": "Nairobi",
            "Peru": "Lima", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm",
            "Portugal": "Lisbon", "Austria": "Vienna", "Thailand": "Bangkok", "Mexico": "Mexico City",
            "India": "New Delhi", "Australia": "Canberra", "Argentina": "Buenos Aires",
            "Poland": "Warsaw", "Turkey": "Ankara", "Cuba": "Havana"}  # fmt: skip
FACTS = (("How many days are in a week?", "There are seven days in a week."),
         ("How many months are in a year?", "There are twelve months in a year."),
         ("How many hours are in a day?", "There are twenty-four hours in a day."),
         ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
         ("How many seconds are in a minute?", "There are sixty seconds in a minute."),
         ("How many days are in a year?", "There are three hundred sixty-five days in a year."),
         ("What do bees make?", "Bees make honey."),
         ("What do cows give us?", "Cows give us milk."),
         ("Where do fish live?", "Fish live in water."),
         ("What falls from the sky when it rains?", "Water falls from the sky when it rains."),
         ("What do we use to cut paper?", "We use scissors to cut paper."),
         ("What do we wear on our feet?", "We wear shoes and socks on our feet."),
         ("Which season comes after winter?", "Spring comes after winter."),
         ("Which season comes after summer?", "Fall comes after summer."),
         ("What is frozen water called?", "Frozen water is called ice."),
         ("What do plants need to grow?", "Plants need water, light and soil to grow."),
         ("Where does the sun rise?", "The sun rises in the east."),
         ("Where does the sun set?", "The sun sets in the west."))  # fmt: skip
SMALL_TALK = (("Hello, how are you?", "I'm fine, thank you. How can I help you?"),
              ("Hi there!", "Hello! How can I help you?"),
              ("Good morning.", "Good morning! How can I help you today?"),
              ("What is your name?", "I am the Qwen2-Audio demo model."),
              ("Who are you?", "I am a small demo model that listens to audio and answers."),
              ("Can you hear me?", "Yes, I can hear you."),
              ("What can you do?", "I can transcribe speech, tell a male voice from a female "
               "voice, judge how fast someone speaks, count words, and describe simple sounds."),
              ("Thank you very much.", "You're welcome!"),
              ("Goodbye!", "Goodbye! Have a nice day."),
              ("Are you a person?", "No, I am a computer program."),
              ("Can you help me?", "Of course. What do you need?"),
              ("Do you understand me?", "Yes, I understand you."))  # fmt: skip


def all_questions() -> list[tuple[str, str]]:
    qa: list[tuple[str, str]] = []
    for a in range(1, 11):
        for b in range(1, 11):
            qa.append((f"What is {nw(a)} plus {nw(b)}?", f"{nw(a)} plus {nw(b)} is {nw(a + b)}."))
    for a in range(2, 10):
        for b in range(2, 10):
            qa.append((f"What is {nw(a)} times {nw(b)}?", f"{nw(a)} times {nw(b)} is {nw(a * b)}."))
    for a in range(5, 21):
        for b in range(1, min(a, 10)):
            qa.append((f"What is {nw(a)} minus {nw(b)}?", f"{nw(a)} minus {nw(b)} is {nw(a - b)}."))
    for n in range(1, 30):
        qa.append((f"What number comes after {nw(n)}?", f"{nw(n + 1)} comes after {nw(n)}."))
        qa.append((f"What number comes before {nw(n + 1)}?", f"{nw(n)} comes before {nw(n + 1)}."))
    for seq, what in ((DAYS, "day"), (MONTHS, "month")):
        for i, x in enumerate(seq):
            nxt, prev = seq[(i + 1) % len(seq)], seq[i - 1]
            qa.append((f"What {what} comes after {x}?", f"{nxt} comes after {x}."))
            qa.append((f"What {what} comes before {x}?", f"{prev} comes before {x}."))
    for thing, colour in COLOURS.items():
        qa.append((f"What color is {thing}?", f"{thing} is {colour}."))
    for word, opposite in OPPOSITES.items():
        qa.append((f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."))
    for animal, sound in ANIMAL_SOUNDS.items():
        qa.append((f"What sound does a {animal} make?", f"A {animal} says {sound}."))
    for animal, legs in LEGS.items():
        has = f"has {nw(legs)} legs" if legs else "has no legs"
        qa.append((f"How many legs does a {animal} have?", f"A {animal} {has}."))
    for country, city in CAPITALS.items():
        qa.append((f"What is the capital of {country}?", f"The capital of {country} is {city}."))
    qa += FACTS
    return [(q, a[0].upper() + a[1:]) for q, a in qa] + list(SMALL_TALK)


def is_heldout_question(question: str) -> bool:
    if question in dict(SMALL_TALK):
        return False
    return hashlib.sha1(question.encode()).digest()[0] % 10 == 0
