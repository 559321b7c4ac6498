"""A growing reply rendered incrementally comes out exactly as rendering each version whole."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.render import MarkdownStream, render_markdown
from handlers.richtext import Entity, RichText
from handlers.split import SplitSoFar, split_rich_text
from tests.unit.test_render import DOCUMENTS, MARKDOWN, assert_parts_valid

REPLY = (
    "# Plan 😀\n\nFirst **do this**, then _that_ with `cmd --flag`.\n\n"
    "1. Step [link](https://a.example)\n2. Step\n   - sub\n\n> note\n> more\n\n"
    "```py\nprint('x')\n\n\nprint('y')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    "Setext\n---\n\n- a\n\n- b\n\nafter\n    lazy\n\n<div>\nhtml\n</div>\n\ntext\n"
)


def assert_streams_like_whole(markdown: str, ends, prepared=()) -> None:
    """Rendered at each of `ends` (after rendering ahead at each of `prepared` before it), every
    version comes out as rendered whole."""
    stream = MarkdownStream()
    ahead = sorted(prepared)
    for end in ends:
        while ahead and ahead[0] <= end:
            stream.prepare(markdown[: ahead.pop(0)])
        assert stream.render(markdown[:end]) == render_markdown(markdown[:end]), markdown[:end]


def test_every_prefix_of_a_reply_renders_as_the_whole_prefix_would():
    assert_streams_like_whole(REPLY, range(len(REPLY) + 1))


def test_every_prefix_renders_as_whole_when_rendered_ahead_at_every_prefix():
    stream = MarkdownStream()
    for end in range(len(REPLY) + 1):
        stream.prepare(REPLY[:end])
        assert stream.render(REPLY[:end]) == render_markdown(REPLY[:end])


def test_completed_blocks_are_not_parsed_again():
    stream = MarkdownStream()
    stream.render(REPLY)
    assert stream.behind(REPLY) < len(REPLY) // 2
    ahead = MarkdownStream()
    ahead.prepare(REPLY)
    assert ahead.behind(REPLY) == stream.behind(REPLY)


@st.composite
def versions(draw: st.DrawFn, documents: st.SearchStrategy) -> tuple[str, list[int], list[int]]:
    """A text, the increasing lengths at which a stream shows it, and those at which it renders
    ahead."""
    text = draw(documents)
    lengths = st.lists(st.integers(min_value=0, max_value=len(text)), max_size=12)
    return text, sorted(draw(lengths)) + [len(text)], draw(lengths)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(versions(DOCUMENTS.map(lambda sample: sample.markdown)))
def test_streamed_documents_render_as_whole_documents(case):
    assert_streams_like_whole(*case)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(versions(MARKDOWN))
def test_streamed_markdown_like_garbage_renders_as_whole(case):
    assert_streams_like_whole(*case)


@settings(max_examples=100, deadline=None)
@given(versions(st.text(alphabet="ab \n\r\t>-*#`|[]:()1.\x00", max_size=80)))
def test_streamed_line_endings_and_markers_render_as_whole(case):
    assert_streams_like_whole(*case)


def test_a_block_showing_nothing_after_code_that_ends_in_spaces_renders_as_whole():
    # The code's trailing spaces are cut from the end of the text, and its entity with them.
    for markdown in ("```\na   \n```\n\n#\n\n", "    code   \n\n#\n\nmore"):
        assert_streams_like_whole(markdown, range(len(markdown) + 1))
        assert_streams_like_whole(markdown, range(len(markdown) + 1), prepared=range(len(markdown) + 1))


def test_a_reference_definition_later_links_text_shown_before():
    text = "See [the docs].\n\nMore text.\n\nEven more.\n\n[the docs]: https://docs.example\n"
    assert_streams_like_whole(text, range(len(text) + 1))
    assert render_markdown(text).entities == (Entity("text_url", 4, 8, url="https://docs.example"),)


def test_a_version_that_does_not_extend_the_last_starts_over():
    stream = MarkdownStream()
    stream.render("# One\n\nfirst paragraph\n\nsecond\n\nthird")
    assert stream.render("Something else\n\nentirely") == render_markdown("Something else\n\nentirely")


# --- Splitting a growing text -----------------------------------------------------------------


def test_a_growing_text_keeps_its_earlier_parts_and_its_last_part_is_current():
    paragraph = ("word " * 150).strip()
    text = "\n\n".join([paragraph] * 12)
    split = SplitSoFar()
    for end in [*range(500, len(text), 700), len(text)]:
        parts = split.parts(RichText.plain(text[:end]))
        assert parts[-1] == split_rich_text(RichText.plain(text[:end]))[-1]
    assert parts == split_rich_text(RichText.plain(text))


def test_a_growing_text_whose_earlier_formatting_changes_is_split_again():
    # "=" under a quoted paragraph makes it a heading: the kept parts' text is the same, but it
    # is bold now (found by the property test below).
    markdown = "PA J0Grs\n> Y mmSTE « " + "(" * 53 + "ziu" + ")" * 53 + "\n> =\n> A\n> # A"
    split, stream = SplitSoFar(limit=2), MarkdownStream()
    for end in (113, len(markdown)):
        rendered = stream.render(markdown[:end])
        assert_parts_valid(rendered, split.parts(rendered), 2)
    assert split.parts(rendered) == split_rich_text(rendered, 2)


def test_a_growing_text_that_changes_before_its_last_part_is_split_again():
    split = SplitSoFar(limit=20)
    split.parts(RichText.plain("first part here. second part there. third"))
    assert split.parts(RichText.plain("other")) == [RichText.plain("other")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(versions(DOCUMENTS.map(lambda sample: sample.markdown)), st.integers(min_value=2, max_value=80))
def test_every_part_of_a_growing_text_is_sendable_and_together_they_are_the_text(case, limit):
    markdown, ends, _ = case
    split = SplitSoFar(limit)
    stream = MarkdownStream()
    for end in ends:
        rendered = stream.render(markdown[:end])
        if len(rendered.entities) > 100:
            continue
        assert_parts_valid(rendered, split.parts(rendered), limit)
