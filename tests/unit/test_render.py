
import re
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from handlers import render
from handlers.render import escape_markdown, render_markdown
from handlers.richtext import Entity, RichText, utf16_len
from handlers.split import split_rich_text

VERBATIM = {"pre", "code"}
SPLITTABLE = {"bold", "italic", "underline", "strike", "spoiler"}
# Telegram's own order for two entities over the same range: the lower one is the outer one.
TELEGRAM_PRIORITY = {
    "blockquote": 0, "pre": 11, "code": 20, "text_url": 49,
    "bold": 90, "italic": 91, "underline": 92, "strike": 93, "spoiler": 94,
}


def covered(text: RichText, entity: Entity) -> str:
    units = text.text.encode("utf-16-le")
    return units[2 * entity.offset : 2 * (entity.offset + entity.length)].decode("utf-16-le")


def only(text: RichText, kind: str) -> list[str]:
    return [covered(text, entity) for entity in text.entities if entity.kind == kind]


def assert_valid(text: RichText) -> None:
    """The entities are ones Telegram accepts for this text."""
    size = utf16_len(text.text)
    boundaries = {0}
    for char in text.text:
        boundaries.add(max(boundaries) + utf16_len(char))
    for entity in text.entities:
        assert entity.length > 0, entity
        assert 0 <= entity.offset and entity.offset + entity.length <= size, entity
        assert entity.offset in boundaries and entity.offset + entity.length in boundaries, "cuts a surrogate pair"
    for first in text.entities:
        for second in text.entities:
            if first is second:
                continue
            a_start, a_end = first.offset, first.offset + first.length
            b_start, b_end = second.offset, second.offset + second.length
            if a_end <= b_start or b_end <= a_start:
                continue
            assert (a_start <= b_start and b_end <= a_end) or (b_start <= a_start and a_end <= b_end), "overlap"
            outer, inner = (first, second) if (a_start, -first.length, TELEGRAM_PRIORITY[first.kind]) < (
                b_start, -second.length, TELEGRAM_PRIORITY[second.kind]
            ) else (second, first)
            assert outer.kind not in VERBATIM, f"{inner} inside {outer}"
            assert not (outer.kind == inner.kind == "blockquote"), "nested blockquotes"
            assert not (outer.kind == "text_url" and inner.kind in VERBATIM | {"text_url"}), f"{inner} in a link"
            assert not (outer.kind in SPLITTABLE and inner.kind in VERBATIM), f"{inner} inside {outer}"


# --- Markdown constructs -------------------------------------------------------------------


@pytest.mark.parametrize("markdown", ["**strong**", "__strong__"])
def test_double_emphasis_becomes_bold(markdown):
    result = render_markdown(f"a {markdown} b")
    assert result.text == "a strong b"
    assert result.entities == (Entity("bold", 2, 6),)


@pytest.mark.parametrize("markdown", ["*soft*", "_soft_"])
def test_single_emphasis_becomes_italic(markdown):
    result = render_markdown(markdown)
    assert result == RichText("soft", (Entity("italic", 0, 4),))


def test_tildes_become_strikethrough():
    assert render_markdown("~~gone~~ kept") == RichText("gone kept", (Entity("strike", 0, 4),))


def test_inline_code_becomes_code():
    assert render_markdown("run `ls -l` now") == RichText("run ls -l now", (Entity("code", 4, 5),))


def test_fenced_code_block_becomes_pre_with_language_from_info_string():
    result = render_markdown("Look:\n\n```python title=x\ndef f():\n    return 1\n```\n\nDone.")
    assert result.text == "Look:\n\ndef f():\n    return 1\n\nDone."
    (pre,) = result.entities
    assert (pre.kind, pre.language, covered(result, pre)) == ("pre", "python", "def f():\n    return 1")


def test_indented_code_block_becomes_pre_without_language():
    result = render_markdown("Text\n\n    x = 1\n    y = 2")
    assert result.text == "Text\n\nx = 1\ny = 2"
    assert result.entities == (Entity("pre", 6, 11),)


def test_link_keeps_its_text_and_points_to_its_url():
    result = render_markdown("see [the docs](https://example.com/a?b=1) please")
    assert result.text == "see the docs please"
    assert result.entities == (Entity("text_url", 4, 8, url="https://example.com/a?b=1"),)


@pytest.mark.parametrize("url", ["http://x.org", "tg://resolve?domain=bot", "mailto:a@b.org"])
def test_links_to_web_telegram_and_mail_become_text_urls(url):
    result = render_markdown(f"[go]({url})")
    assert result.entities == (Entity("text_url", 0, 2, url=url),)


@pytest.mark.parametrize("markdown", ["[go](ftp://files.org/a)", "[go](/relative/path)", "[go](javascript:alert(1))"])
def test_links_with_other_schemes_are_plain_text(markdown):
    result = render_markdown(markdown)
    assert "go" in result.text
    assert not any(entity.kind == "text_url" for entity in result.entities)


def test_autolinks_and_bare_urls_stay_plain_text():
    result = render_markdown("<https://a.example> and https://b.example")
    assert result == RichText.plain("https://a.example and https://b.example")


def test_link_without_text_shows_its_url():
    assert render_markdown("[](https://a.example)").text == "https://a.example"


def test_code_inside_link_text_keeps_the_link():
    result = render_markdown("[`fn`](https://docs.example)")
    assert result == RichText("fn", (Entity("text_url", 0, 2, url="https://docs.example"),))


def test_bold_inside_link_is_kept_nested():
    result = render_markdown("[**big**](https://a.example)")
    assert set(result.entities) == {Entity("text_url", 0, 3, url="https://a.example"), Entity("bold", 0, 3)}
    assert_valid(result)


def test_heading_becomes_a_bold_line():
    result = render_markdown("# Title\nBody")
    assert result.text == "Title\n\nBody"
    assert result.entities == (Entity("bold", 0, 5),)


def test_bold_around_inline_code_is_cut_around_it():
    # Telegram accepts no bold over code, so a heading with code in it is bold around the code.
    result = render_markdown("## Use `grep` here")
    assert result.text == "Use grep here"
    assert only(result, "bold") == ["Use ", " here"]
    assert only(result, "code") == ["grep"]
    assert_valid(result)


def test_bulleted_list_items_get_bullets_and_nested_lists_are_indented():
    markdown = "- one\n- two\n  - inner\n    - deepest\n- three"
    assert render_markdown(markdown).text == "• one\n• two\n  • inner\n    • deepest\n• three"


def test_ordered_list_keeps_its_start_number():
    assert render_markdown("3. c\n4. d\n5. e").text == "3. c\n4. d\n5. e"


def test_ordered_list_nested_in_bullets_is_indented():
    assert render_markdown("- a\n  1. x\n  2. y").text == "• a\n  1. x\n  2. y"


def test_list_items_keep_their_formatting():
    result = render_markdown("- **a** b")
    assert result == RichText("• a b", (Entity("bold", 2, 1),))


def test_empty_list_item_leaves_no_trailing_space():
    assert render_markdown("- \n- x").text == "•\n• x"


def test_blockquote_becomes_a_blockquote_entity():
    result = render_markdown("Before\n\n> quoted **line**\n> more\n\nAfter")
    assert result.text == "Before\n\nquoted line\nmore\n\nAfter"
    assert only(result, "blockquote") == ["quoted line\nmore"]
    assert only(result, "bold") == ["line"]
    assert_valid(result)


def test_nested_blockquotes_become_one_quote():
    result = render_markdown("> outer\n>\n> > inner")
    assert only(result, "blockquote") == ["outer\n\ninner"]
    assert_valid(result)


def test_horizontal_rule_becomes_a_line():
    assert render_markdown("above\n\n---\n\nbelow").text == "above\n\n———\n\nbelow"


def test_image_becomes_its_alt_text_and_url():
    assert render_markdown("![a *cat*](https://img.example/cat.png)").text == "a cat (https://img.example/cat.png)"


def test_table_is_kept_as_aligned_monospace_lines():
    result = render_markdown("| name | n |\n|---|--:|\n| apple | 3 |\n| fig | 12 |")
    table = "| name  | n  |\n|-------|----|\n| apple | 3  |\n| fig   | 12 |"
    assert result == RichText(table, (Entity("pre", 0, utf16_len(table)),))


def test_raw_html_stays_literal_text():
    assert render_markdown("a <b>bold?</b> b").text == "a <b>bold?</b> b"
    assert render_markdown("<div>\nblock\n</div>").text == "<div>\nblock\n</div>"


def test_paragraphs_are_separated_by_one_blank_line_and_no_trailing_whitespace():
    result = render_markdown("\n\none\ntwo  \n\n\n\nthree   \n\n\n")
    assert result.text == "one\ntwo\n\nthree"


def test_code_in_a_list_item_keeps_its_own_indentation():
    result = render_markdown("- step:\n\n  ```sh\n  make\n    all\n  ```")
    assert result.text == "• step:\n  make\n  all"
    assert only(result, "pre") == ["make\n  all"]


# --- UTF-16 offsets ------------------------------------------------------------------------


def test_offsets_count_an_emoji_as_two_units():
    assert render_markdown("😀 **bold**") == RichText("😀 bold", (Entity("bold", 3, 4),))


def test_lengths_count_non_bmp_characters_as_two_units():
    result = render_markdown("é **a𝄞b** `😀`")
    assert result.entities == (Entity("bold", 2, 4), Entity("code", 7, 2))
    assert only(result, "bold") == ["a𝄞b"]
    assert only(result, "code") == ["😀"]


# --- Streaming ------------------------------------------------------------------------------


def test_unclosed_fence_is_a_code_block_to_the_end():
    result = render_markdown("Here you go:\n\n```js\nconst a = 1;\nconst b")
    assert result.text == "Here you go:\n\nconst a = 1;\nconst b"
    assert result.entities == (Entity("pre", 14, 20, language="js"),)


def test_unclosed_bold_stays_literal():
    assert render_markdown("this is **import") == RichText.plain("this is **import")


def test_every_prefix_of_a_streamed_reply_renders_validly():
    reply = (
        "# Plan 😀\n\nFirst **do this**, then _that_ with `cmd --flag`.\n\n"
        "1. Step [link](https://a.example)\n2. Step\n   - sub\n\n> note\n\n"
        "```py\nprint('x')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    for end in range(len(reply) + 1):
        result = render_markdown(reply[:end])
        assert_valid(result)
        assert result.text == result.text.rstrip()


# --- Robustness -----------------------------------------------------------------------------

MARKDOWN_PIECES = st.sampled_from(
    ["**", "__", "*", "_", "~~", "`", "```", "```py", "\n", "\n\n", " ", "  ", "> ", "- ", "* ", "1. ", "10) ",
     "#", "## ", "[", "]", "(", ")", "](https://x.example)", "](tg://u)", "![", "<", ">", "<b>", "|", "|---|",
     "    ", "\t", "---", "\\", "&amp;", "😀", "𝄞", "é", "word", "Text.", "https://bare.example", "\r\n", "\x00",
     " **bold words go here** ", " `some code here` ", " [link text here](https://x.example) ",
     "\n```sh\ncode line\n  more code. Here\n```\n", "\n> quoted words. More words\n", "\n\n# A heading here\n"]
)
MARKDOWN = st.lists(MARKDOWN_PIECES | st.text(max_size=5), max_size=60).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MARKDOWN)
def test_markdown_like_garbage_renders_to_valid_entities(markdown):
    result = render_markdown(markdown)
    assert_valid(result)
    assert result.text == result.text.rstrip()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises_and_stays_valid(markdown):
    assert_valid(render_markdown(markdown))


def test_internal_failure_falls_back_to_the_markdown_as_plain_text(monkeypatch):
    def broken(*_args):
        raise RuntimeError("bug")

    monkeypatch.setattr(render, "_render_blocks", broken)
    assert render_markdown("**x**") == RichText.plain("**x**")


# --- Splitting ------------------------------------------------------------------------------


def assert_parts_valid(original: RichText, parts: list[RichText], limit: int) -> None:
    """Each part is sendable, and together they are the original minus seam whitespace."""
    cursor = 0
    for part in parts:
        assert part.text.strip(), "empty part"
        assert utf16_len(part.text) <= limit
        assert len(part.entities) <= 100
        assert_valid(part)
        position = original.text.find(part.text, cursor)
        assert position >= 0 and not original.text[cursor:position].strip(), "text lost or reordered"
        cursor = position + len(part.text)
        assert_entities_preserved(original, part, utf16_len(original.text[:position]))
    assert not original.text[cursor:].strip()
    assert "".join("".join(part.text for part in parts).split()) == "".join(original.text.split())


def unit_styles(text: RichText, shift: int = 0) -> set[tuple]:
    return {
        (shift + unit, entity.kind, entity.url, entity.language)
        for entity in text.entities
        for unit in range(entity.offset, entity.offset + entity.length)
    }


def assert_entities_preserved(original: RichText, part: RichText, base: int) -> None:
    span = range(base, base + utf16_len(part.text))
    expected = {style for style in unit_styles(original) if style[0] in span}
    assert unit_styles(part, base) == expected


def test_text_within_the_limit_is_returned_unchanged():
    text = RichText("x" * 4096, (Entity("bold", 0, 4096),))
    assert split_rich_text(text) == [text]


def test_text_one_unit_over_the_limit_is_split():
    text = RichText.plain("word " * 819 + "ab")  # 4097 units
    parts = split_rich_text(text)
    assert len(parts) == 2
    assert_parts_valid(text, parts, 4096)


def test_limit_counts_utf16_units_and_never_cuts_a_surrogate_pair():
    exactly = RichText.plain("😀" * 2048)
    assert split_rich_text(exactly) == [exactly]
    over = RichText.plain("😀" * 2049)
    parts = split_rich_text(over)
    assert [part.text for part in parts] == ["😀" * 2048, "😀"]


def test_split_prefers_a_paragraph_break():
    text = RichText.plain("a" * 3000 + "\n\n" + "b " * 400 + "\n" + "c. " * 300 + "d " * 100)
    parts = split_rich_text(text)
    assert parts[0].text == "a" * 3000
    assert_parts_valid(text, parts, 4096)


def test_split_prefers_newline_then_sentence_end_then_space():
    line_first = RichText.plain("a" * 60 + "\n" + "b. " * 5 + "c " * 5 + "d" * 60)
    assert split_rich_text(line_first, limit=100)[0].text == "a" * 60
    sentence_next = RichText.plain("a" * 60 + " b. c " + "d" * 60)
    assert split_rich_text(sentence_next, limit=100)[0].text == "a" * 60 + " b."
    space_last = RichText.plain("a" * 60 + " b c " + "d" * 60)
    assert split_rich_text(space_last, limit=100)[0].text == "a" * 60 + " b c"


def test_split_does_not_leave_a_tiny_part_for_an_early_paragraph_break():
    text = RichText.plain("a\n\n" + "b" * 80 + "\n" + "c" * 50)
    assert [part.text for part in split_rich_text(text, limit=100)] == ["a\n\n" + "b" * 80, "c" * 50]


def test_split_cuts_anywhere_only_without_any_seam():
    text = RichText.plain("x" * 250)
    assert [part.text for part in split_rich_text(text, limit=100)] == ["x" * 100, "x" * 100, "x" * 50]


def test_split_does_not_cut_a_code_block_that_fits_in_one_part():
    intro = "Intro words here. " * 5
    code = "\n".join(f"line {index}" for index in range(40))  # 309 units, no blank line
    text = RichText(f"{intro}\n\n{code}\n\nOutro.", (Entity("pre", len(intro) + 2, utf16_len(code), language="py"),))
    parts = split_rich_text(text, limit=350)
    assert [part.text for part in parts] == [intro.rstrip(), f"{code}\n\nOutro."]
    assert parts[1].entities == (Entity("pre", 0, utf16_len(code), language="py"),)
    assert_parts_valid(text, parts, 350)


def test_oversized_code_block_continues_as_pre_with_its_language():
    code = "\n".join(f"    value_{index} = compute({index})" for index in range(300))
    text = render_markdown(f"Here:\n\n```python\n{code}\n```\n\nThat is all.")
    parts = split_rich_text(text)
    assert len(parts) >= 3
    pieces = [entity for part in parts for entity in part.entities]
    assert {(entity.kind, entity.language) for entity in pieces} == {("pre", "python")}
    assert all(part.entities for part in parts[1:-1])
    # The code is cut between lines, each line keeps its indentation.
    for part in parts:
        for line in "\n".join(only(part, "pre")).split("\n"):
            assert line.startswith("    value_") and line.endswith(")")
    assert_parts_valid(text, parts, 4096)


def test_entities_are_rebased_to_their_part():
    text = RichText("a" * 90 + " " + "bold", (Entity("bold", 91, 4),))
    first, second = split_rich_text(text, limit=92)
    assert second == RichText("bold", (Entity("bold", 0, 4),))
    assert first == RichText.plain("a" * 90)


def test_parts_hold_at_most_a_hundred_entities():
    text = render_markdown(" ".join(f"**w{index}**" for index in range(250)))
    assert utf16_len(text.text) < 4096
    parts = split_rich_text(text)
    assert len(parts) == 3
    assert [len(part.entities) for part in parts] == [100, 100, 50]
    assert_parts_valid(text, parts, 4096)


def test_whitespace_only_text_gives_no_parts():
    assert split_rich_text(RichText.plain(" \n\n ")) == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MARKDOWN, st.integers(min_value=2, max_value=80))
def test_every_part_is_valid_for_any_rendered_text_and_limit(markdown, limit):
    text = render_markdown(markdown)
    parts = split_rich_text(text, limit)
    assert_parts_valid(text, parts, limit)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MARKDOWN, st.integers(min_value=2, max_value=80))
def test_an_entity_that_fits_is_never_cut(markdown, limit):
    text = render_markdown(markdown)
    assume(len(text.entities) <= 100)
    parts = split_rich_text(text, limit)
    placed, cursor = [], 0
    for part in parts:
        position = text.text.find(part.text, cursor)
        placed.append((utf16_len(text.text[:position]), utf16_len(text.text[: position + len(part.text)])))
        cursor = position + len(part.text)
    for entity in text.entities:
        inner = covered(text, entity)
        if entity.length > limit or not inner.strip():
            continue
        start = entity.offset + utf16_len(inner[: len(inner) - len(inner.lstrip())])
        end = entity.offset + entity.length - utf16_len(inner[len(inner.rstrip()) :])
        assert any(first <= start and end <= last for first, last in placed), entity


# --- No word is lost -------------------------------------------------------------------------

# Generated Markdown comes with the words a reader must see, in order. Punctuation is spaced
# apart from words, so no word becomes a link address, fence info string or HTML entity, where
# CommonMark rightly hides it; backticks come only in whole code spans, which keep their spaces.
WORD_PATTERN = re.compile(r"[^\W_]+")
WORDS = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,6}", fullmatch=True)
PUNCTUATION = st.sampled_from([*"!\"#$%&'()*+,-./:;<=>?@[\\]^_{|}~", "…", "—", "«", "»", "**", "~~"])


@dataclass(frozen=True)
class Sample:
    markdown: str
    words: tuple[str, ...] = ()


def spaced(samples: list[Sample], separator: str = " ") -> Sample:
    words = tuple(word for sample in samples for word in sample.words)
    return Sample(separator.join(sample.markdown for sample in samples), words)


def wrapped(opener: str, inner: Sample, closer: str = "") -> Sample:
    return Sample(opener + inner.markdown + closer, inner.words)


INLINE_ATOMS = WORDS.map(lambda word: Sample(word, (word,))) | PUNCTUATION.map(Sample)
INLINE_MARKUP = [
    ("**", "**"), ("__", "__"), ("*", "*"), ("_", "_"), ("~~", "~~"),
    ("[", "](https://x.example/a_b)"), ("![", "](https://img.example/c.png)"),
]
INLINE = st.recursive(
    INLINE_ATOMS,
    lambda inner: st.lists(inner, min_size=1, max_size=5).map(spaced)
    | st.builds(lambda markup, sample: wrapped(markup[0], sample, markup[1]), st.sampled_from(INLINE_MARKUP), inner),
    max_leaves=12,
)
CODE_LINE = st.lists(WORDS, min_size=1, max_size=4).map(lambda words: Sample(" ".join(words), tuple(words)))
CODE_SPAN = CODE_LINE.map(lambda line: wrapped("`", line, "`"))

# Not strikethrough: "~~~~" at a line start would open a code fence (see LINE).
DEEP_INLINE_MARKUP = [markup for markup in INLINE_MARKUP if markup[0] != "~~"] + [("<", ">"), ("(", ")")]


@st.composite
def deep_inline(draw: st.DrawFn) -> Sample:
    """The same markup nested up to 120 times around one word."""
    opener, closer = draw(st.sampled_from(DEEP_INLINE_MARKUP))
    depth = draw(st.integers(min_value=1, max_value=120))
    word = draw(WORDS)
    return Sample(opener * depth + word + closer * depth, (word,))


# A line starting "~~~" (after any list or quote markers) opens a code fence whose info string
# would hide the rest of the line.
LINE = st.lists(INLINE | CODE_SPAN | deep_inline(), min_size=1, max_size=4).map(spaced).filter(
    lambda line: "~~~" not in line.markdown
)
PARAGRAPH = st.lists(LINE, min_size=1, max_size=3).map(lambda lines: spaced(lines, "\n"))
HEADING = st.builds(lambda level, line: wrapped("#" * level + " ", line), st.integers(min_value=1, max_value=6), LINE)
FENCE = st.lists(CODE_LINE, min_size=1, max_size=3).map(lambda lines: wrapped("```py\n", spaced(lines, "\n"), "\n```"))


def contained(container: str, inner: Sample) -> Sample:
    """`inner` inside a quote, a bulleted item or a numbered item."""
    first, rest = {"quote": ("> ", "> "), "bullet": ("- ", "  "), "number": ("1. ", "   ")}[container]
    lines = inner.markdown.split("\n")
    prefixed = [first + lines[0]] + [rest + line if line else rest.rstrip() for line in lines[1:]]
    return Sample("\n".join(prefixed), inner.words)


CONTAINERS = st.sampled_from(["quote", "bullet", "number"])


@st.composite
def deeply_contained(draw: st.DrawFn, blocks: st.SearchStrategy[Sample]) -> Sample:
    """A block inside up to 120 quotes and list items, nested in a repeating pattern."""
    sample = draw(blocks)
    pattern = draw(st.lists(CONTAINERS, min_size=1, max_size=3))
    for depth in range(draw(st.integers(min_value=1, max_value=120))):
        sample = contained(pattern[depth % len(pattern)], sample)
    return sample


BLOCK_SEPARATORS = st.sampled_from(["\n", "\n\n"])
BLOCKS = st.recursive(
    PARAGRAPH | HEADING | FENCE,
    lambda inner: st.tuples(CONTAINERS, inner).map(lambda pair: contained(*pair))
    | st.tuples(st.lists(inner, min_size=1, max_size=3), BLOCK_SEPARATORS).map(lambda pair: spaced(*pair)),
    max_leaves=8,
)
DOCUMENTS = st.tuples(st.lists(BLOCKS | deeply_contained(BLOCKS), min_size=1, max_size=5), BLOCK_SEPARATORS).map(
    lambda pair: spaced(*pair)
)


def words_of(text: str) -> list[str]:
    return WORD_PATTERN.findall(text)


def assert_in_order(expected: Iterable[str], text: str) -> None:
    remaining = iter(words_of(text))
    missing = [word for word in expected if word not in remaining]  # consumes up to each match
    assert not missing, f"lost or reordered: {missing[:5]}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(DOCUMENTS)
def test_every_word_survives_rendering_and_splitting_in_order(sample):
    rendered = render_markdown(sample.markdown)
    assert_in_order(sample.words, rendered.text)
    parts = split_rich_text(rendered)
    assert words_of(" ".join(part.text for part in parts)) == words_of(rendered.text)


def test_a_list_nested_thirty_deep_keeps_every_item_and_what_follows():
    markdown = "\n".join("  " * depth + f"- item{depth}" for depth in range(30)) + "\n\nAfter the list."
    result = render_markdown(markdown)
    assert words_of(result.text) == [f"item{depth}" for depth in range(30)] + ["After", "the", "list"]
    assert result.text.startswith("• item0\n  • item1\n")


def test_a_quote_nested_twenty_five_deep_stays_one_quote_with_its_text():
    result = render_markdown("> " * 25 + "deep **quote** text")
    assert result.text == "deep quote text"
    assert only(result, "blockquote") == ["deep quote text"]
    assert only(result, "bold") == ["quote"]


@pytest.mark.parametrize(
    ("markdown", "text"),
    [
        ("Intro\n" + ">" * 100 + "\nOutro", "Intro\n\nOutro"),
        ("Intro\n\n" + ">" * 100 + " Middle\n\nOutro", "Intro\n\nMiddle\n\nOutro"),
        ("Intro\n" + "> " * 100 + "Middle\nOutro", "Intro\n\nMiddle\nOutro"),
    ],
)
def test_a_hundred_nested_quote_markers_lose_no_line(markdown, text):
    result = render_markdown(markdown)
    assert result.text == text
    assert_valid(result)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40).filter(lambda t: t == t.strip() and "  " not in t))
@example("&copy; AT&amp;T &#65;")  # entity references, which random text seldom spells
@example("1. [a](b) <i>c</i> | d\\")
def test_escaped_text_renders_as_itself(text):
    # A title, a file name or an error shown inside a reply: whatever it holds, no formatting.
    rendered = render_markdown(escape_markdown(text))
    assert rendered.text == text and rendered.entities == ()
