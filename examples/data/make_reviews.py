"""Write `reviews/{train,dev}.tsv`: a small labelled sentiment set in the GLUE SST-2 file format.

The sentences are composed from the phrase lists below (written for this project, no outside text), so the set is
license-clean and reproducible: `python examples/data/make_reviews.py` rewrites the same files. Label 1 is positive,
0 negative. Negated phrases ("was not dull") carry the opposite label of their adjective, so a bag of words alone
does not solve the task.
"""

from __future__ import annotations

import random
from pathlib import Path

SUBJECTS = [
    "the film", "this movie", "the plot", "the acting", "the soundtrack", "the ending", "the script", "the cast",
    "the director's new picture", "the documentary", "the sequel", "the dialogue", "the camera work", "the story",
    "this series", "the first episode", "the animation", "the lead performance", "the pacing", "the finale",
]
POSITIVE = [
    "wonderful", "moving", "brilliant", "charming", "gripping", "delightful", "beautiful", "funny", "clever",
    "memorable", "touching", "superb", "engaging", "inventive", "heartfelt", "thrilling", "warm", "sharp",
]
NEGATIVE = [
    "dull", "boring", "clumsy", "tedious", "awful", "forgettable", "flat", "confusing", "lifeless", "predictable",
    "annoying", "bland", "messy", "painful", "shallow", "tiresome", "weak", "stale",
]
VERBS = ["was", "is", "felt", "seemed", "turned out to be"]
INTENSIFIERS = ["", "really ", "truly ", "rather ", "quite ", "utterly ", "surprisingly "]
ENDINGS = [
    ".", " from start to finish.", " in every way.", ", and i would say so again.", " for most of its length.",
    " despite the hype.", " on a second viewing.", ".",
]
OPENERS = ["", "honestly, ", "in the end, ", "to my surprise, ", "all in all, ", "i thought "]


def sentence(rng: random.Random) -> tuple[str, int]:
    positive_word = rng.random() < 0.5
    adjective = rng.choice(POSITIVE if positive_word else NEGATIVE)
    negated = rng.random() < 0.25
    verb = rng.choice(VERBS)
    words = f"{verb} not {adjective}" if negated else f"{verb} {rng.choice(INTENSIFIERS)}{adjective}"
    text = f"{rng.choice(OPENERS)}{rng.choice(SUBJECTS)} {words}{rng.choice(ENDINGS)}"
    return text, int(positive_word != negated)


def write(path: Path, rows: list[tuple[str, int]]) -> None:
    lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in rows]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    rng = random.Random(2310)
    seen: set[str] = set()
    rows: list[tuple[str, int]] = []
    while len(rows) < 600:
        text, label = sentence(rng)
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    folder = Path(__file__).resolve().parent / "reviews"
    folder.mkdir(exist_ok=True)
    write(folder / "train.tsv", rows[:480])
    write(folder / "dev.tsv", rows[480:])


if __name__ == "__main__":
    main()
