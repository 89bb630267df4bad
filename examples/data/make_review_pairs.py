"""Write `review_pairs/{train,test}.tsv`: each review of `reviews/` paired with a rewording that says the same.

A review of the bundled set (`make_reviews.py`) judges one aspect of a film ("the soundtrack", "the pacing") with
one adjective, possibly negated. Its rewording names the same aspect and the same judgement in other words: a
synonym of the aspect ("the music", "the score"), another adjective of the same meaning group ("dull", "boring" and
"tedious" are one group; "monotonous" rewords them) with the same negation, in another sentence frame or with
another opener, verb and ending. So a pair is a paraphrase pair, the usual training data of sentence-embedding models, and finding a review's rewording among
the rewordings of other reviews is a small retrieval task that word overlap does not solve.

Columns: `anchor` (the review), `positive` (its rewording), `aspect` and `judgement` (what both say, e.g.
`music` and `not dull`): two rows with the same aspect and judgement are rewordings of each other too. The train
split pairs the reviews of `reviews/train.tsv`, the test split those of `reviews/dev.tsv`.

The word lists are written for this project (no outside text) and the choices are seeded:
`python examples/data/make_review_pairs.py` rewrites the same files.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from make_reviews import ENDINGS, INTENSIFIERS, NEGATIVE, OPENERS, POSITIVE, SUBJECTS, VERBS

# Each subject of make_reviews.py: (the aspect it names, the words its rewordings use for that aspect).
ASPECTS = {
    "the film": ("film", ["the movie", "this film", "the feature"]),
    "this movie": ("film", ["the movie", "this film", "the feature"]),
    "the director's new picture": ("new film", ["the director's latest film", "the new film by the director"]),
    "the plot": ("story", ["the storyline", "the narrative"]),
    "the story": ("story", ["the storyline", "the narrative"]),
    "the acting": ("acting", ["the performances", "the actors' work"]),
    "the lead performance": ("lead role", ["the lead actor", "the central role"]),
    "the cast": ("cast", ["the ensemble", "the actors"]),
    "the soundtrack": ("music", ["the music", "the score"]),
    "the ending": ("ending", ["the last scene", "the conclusion"]),
    "the finale": ("ending", ["the last scene", "the conclusion"]),
    "the script": ("writing", ["the screenplay", "the writing"]),
    "the dialogue": ("dialogue", ["the conversations", "the lines"]),
    "the documentary": ("documentary", ["the nonfiction film", "the documentary feature"]),
    "the sequel": ("sequel", ["the follow-up", "the second instalment"]),
    "the camera work": ("camera", ["the cinematography", "the photography"]),
    "this series": ("series", ["this show", "the season"]),
    "the first episode": ("first episode", ["the pilot", "the opening episode"]),
    "the animation": ("animation", ["the animated images", "the drawings"]),
    "the pacing": ("pacing", ["the tempo", "the rhythm"]),
}
# Meaning groups of the adjectives of make_reviews.py, with the adjectives their rewordings use.
JUDGEMENTS = {
    "great": (["wonderful", "brilliant", "superb"], ["marvelous", "excellent", "outstanding", "terrific"]),
    "moving": (["moving", "touching", "heartfelt"], ["affecting", "poignant", "tender", "sincere"]),
    "charming": (["charming", "delightful", "warm"], ["lovely", "enchanting", "pleasant", "endearing"]),
    "gripping": (["gripping", "engaging", "thrilling"], ["riveting", "captivating", "exciting", "absorbing"]),
    "beautiful": (["beautiful"], ["gorgeous", "stunning"]),
    "funny": (["funny"], ["hilarious", "amusing"]),
    "clever": (["clever", "sharp", "inventive"], ["smart", "witty", "imaginative", "original"]),
    "memorable": (["memorable"], ["unforgettable", "striking"]),
    "dull": (["dull", "boring", "tedious", "tiresome", "lifeless", "flat"], ["monotonous", "uninteresting", "drab"]),
    "bad": (["awful", "painful", "weak"], ["terrible", "dreadful", "poor"]),
    "clumsy": (["clumsy", "messy"], ["awkward", "sloppy", "careless"]),
    "forgettable": (["forgettable", "bland", "stale", "predictable"], ["unremarkable", "generic", "formulaic"]),
    "confusing": (["confusing"], ["muddled", "incoherent"]),
    "annoying": (["annoying"], ["irritating", "grating"]),
    "shallow": (["shallow"], ["superficial", "thin"]),
}
GROUP_OF = {adjective: group for group, (adjectives, _) in JUDGEMENTS.items() for adjective in adjectives}
# Sentence frames of the rewordings: (affirmed, negated); {intensifier} is empty or ends with a space.
FRAMES = [
    ("{opener}{subject} {verb} {intensifier}{adjective}{ending}", "{opener}{subject} {verb} not {adjective}{ending}"),
    ("i found {subject} {intensifier}{adjective}.", "i did not find {subject} {adjective}."),
    ("{subject} struck me as {intensifier}{adjective}.", "{subject} never struck me as {adjective}."),
    ("my verdict on {subject}: {intensifier}{adjective}.", "my verdict on {subject}: not {adjective}."),
]


def _alternatives(options: list[str]) -> str:
    return "|".join(re.escape(option) for option in sorted(options, key=len, reverse=True))


REVIEW = re.compile(
    f"(?P<opener>{_alternatives(OPENERS)})(?P<subject>{_alternatives(SUBJECTS)}) (?P<verb>{_alternatives(VERBS)}) "
    f"(?P<negation>not )?(?P<intensifier>{_alternatives(INTENSIFIERS)})"
    f"(?P<adjective>{_alternatives(POSITIVE + NEGATIVE)})(?P<ending>{_alternatives(ENDINGS)})"
)


def parse(review: str) -> dict[str, str]:
    """The parts of a review written by make_reviews.py: opener, subject, verb, negation, intensifier, adjective,
    ending."""
    match = REVIEW.fullmatch(review)
    if match is None:
        raise ValueError(f"{review!r} is not a review of make_reviews.py")
    return match.groupdict(default="")


def reword(review: str, rng: random.Random) -> tuple[str, str, str]:
    """`(rewording, aspect, judgement)` of a review: the same aspect and judgement in other words."""
    parts = parse(review)
    aspect, subjects = ASPECTS[parts["subject"]]
    group = GROUP_OF[parts["adjective"]]
    negated = bool(parts["negation"])
    affirmed_frame, negated_frame = rng.choice(FRAMES)
    rewording = (negated_frame if negated else affirmed_frame).format(
        opener=rng.choice([opener for opener in OPENERS if opener != parts["opener"]]),
        subject=rng.choice(subjects),
        verb=rng.choice([verb for verb in VERBS if verb != parts["verb"]]),
        intensifier=rng.choice(INTENSIFIERS),
        adjective=rng.choice(JUDGEMENTS[group][1]),
        ending=rng.choice([ending for ending in ENDINGS if ending != parts["ending"]]),
    )
    return rewording, aspect, f"not {group}" if negated else group


def write_pairs(folder: Path) -> None:
    """Write `train.tsv` and `test.tsv` into `folder` (created if needed) from the reviews next to this script."""
    rng = random.Random(1810)
    folder.mkdir(parents=True, exist_ok=True)
    reviews_folder = Path(__file__).resolve().parent / "reviews"
    for source, target in (("train.tsv", "train.tsv"), ("dev.tsv", "test.tsv")):
        reviews = [line.split("\t")[0] for line in (reviews_folder / source).read_text().splitlines()[1:]]
        lines = ["anchor\tpositive\taspect\tjudgement"]
        for review in reviews:
            rewording, aspect, judgement = reword(review, rng)
            lines.append(f"{review}\t{rewording}\t{aspect}\t{judgement}")
        (folder / target).write_text("\n".join(lines) + "\n")


def main() -> None:
    write_pairs(Path(__file__).resolve().parent / "review_pairs")


if __name__ == "__main__":
    main()
