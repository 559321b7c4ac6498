"""Markdown to Notion blocks: the structure a reader sees, and every request within Notion's limits."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.notion_blocks import (
    BATCH_BYTES,
    block_text,
    code_language,
    element_count,
    markdown_to_blocks,
    plain_rich_text,
    request_batches,
    split_text,
    utf16_units,
)
from tests.fakes.notion_server import NotionError, check_children, check_rich_text


def types(blocks):
    return [block["type"] for block in blocks]


def children(block):
    return block[block["type"]].get("children", [])


def all_requests_valid(blocks):
    for batch in request_batches(blocks):
        check_children(batch)  # raises the fake's validation error
        assert len(json.dumps(batch, ensure_ascii=False).encode()) <= BATCH_BYTES


def test_headings_paragraphs_and_rules_become_their_notion_blocks():
    blocks = markdown_to_blocks("# Title\n\nSome text.\n\n## Part\n\n#### Deep\n\n---\n\nMore.")
    assert types(blocks) == ["heading_1", "paragraph", "heading_2", "heading_3", "divider", "paragraph"]
    assert [block_text(b) for b in blocks] == ["Title", "Some text.", "Part", "Deep", "", "More."]


def test_bulleted_and_numbered_lists_keep_their_items_and_nesting():
    blocks = markdown_to_blocks("- apples\n- pears\n  - green\n  - red\n\n1. first\n2. second")
    assert types(blocks) == ["bulleted_list_item", "bulleted_list_item", "numbered_list_item", "numbered_list_item"]
    assert [block_text(b) for b in children(blocks[1])] == ["green", "red"]


def test_lists_deeper_than_two_levels_are_flattened_into_the_second_level():
    blocks = markdown_to_blocks("- one\n  - two\n    - three\n      - four")
    assert len(blocks) == 1
    nested = children(blocks[0])
    assert [block_text(b) for b in nested] == ["two", "three", "four"]
    assert all(not children(b) for b in nested)
    check_children(blocks)


def test_code_block_keeps_its_text_and_maps_the_language_to_notions_names():
    blocks = markdown_to_blocks("```py\nprint('hi')\n```\n\n```\nplain\n```\n\n```brainfuck\n+++\n```")
    assert types(blocks) == ["code", "code", "code"]
    assert [b["code"]["language"] for b in blocks] == ["python", "plain text", "plain text"]
    assert block_text(blocks[0]) == "print('hi')"


@pytest.mark.parametrize("info, expected", [("python", "python"), ("JS", "javascript"), ("c++", "c++"), ("sh", "shell"), ("yml", "yaml"), ("ts title=x", "typescript")])
def test_code_language_aliases(info, expected):
    assert code_language(info) == expected


def test_links_and_emphasis_become_annotated_rich_text():
    [block] = markdown_to_blocks("See **the [docs](https://example.com/docs)** and `code`, ~~old~~ *new*.")
    items = block["paragraph"]["rich_text"]
    linked = [i for i in items if i["text"].get("link")]
    assert [(i["text"]["content"], i["text"]["link"]["url"], i["annotations"]) for i in linked] == [
        ("docs", "https://example.com/docs", {"bold": True})
    ]
    styled = {i["text"]["content"]: i.get("annotations", {}) for i in items}
    assert styled["code"] == {"code": True} and styled["old"] == {"strikethrough": True} and styled["new"] == {"italic": True}


def test_links_notion_would_refuse_are_kept_as_plain_text():
    long_url = "https://example.com/" + "a" * 2000
    [block] = markdown_to_blocks(f"[relative](docs/page) and [huge]({long_url})")
    items = block["paragraph"]["rich_text"]
    assert all("link" not in i["text"] for i in items)
    assert block_text(block) == "relative and huge"


def test_long_text_is_cut_into_items_of_at_most_2000_utf16_units_without_splitting_emoji():
    text = ("😀" * 1500) + ("x" * 3000)
    pieces = split_text(text)
    assert "".join(pieces) == text
    assert all(utf16_units(p) <= 2000 for p in pieces)
    check_rich_text(plain_rich_text(text), "title")


def test_a_paragraph_needing_over_100_items_becomes_several_paragraphs_with_all_the_text():
    text = "word " * 50_000  # 250,000 characters: 125 items of 2000
    blocks = markdown_to_blocks(text)
    assert len(blocks) > 1 and set(types(blocks)) == {"paragraph"}
    assert all(len(b["paragraph"]["rich_text"]) <= 100 for b in blocks)
    assert "".join(block_text(b) for b in blocks) == text.strip()
    all_requests_valid(blocks)


def test_batches_hold_at_most_100_blocks_and_keep_their_order():
    blocks = markdown_to_blocks("\n\n".join(f"paragraph {n}" for n in range(250)))
    batches = request_batches(blocks)
    assert [len(b) for b in batches] == [100, 100, 50]
    assert [block_text(b) for batch in batches for b in batch] == [f"paragraph {n}" for n in range(250)]


def test_batches_stay_under_1000_block_elements_when_items_have_many_children():
    markdown = "\n".join(f"- item {n}\n" + "".join(f"  - sub {n}.{m}\n" for m in range(30)) for n in range(60))
    blocks = markdown_to_blocks(markdown)
    batches = request_batches(blocks)
    assert all(sum(element_count(b) for b in batch) <= 1000 for batch in batches)
    assert sum(len(batch) for batch in batches) == 60
    all_requests_valid(blocks)


def test_batches_stay_under_the_payload_size_limit():
    # Four-byte characters: 100 full paragraphs would be far over 500 KB.
    blocks = markdown_to_blocks("\n\n".join("😀" * 1000 for _ in range(100)))
    assert len(request_batches(blocks)) > 1
    all_requests_valid(blocks)


def test_the_fake_refuses_what_notion_refuses():
    too_long = [{"type": "paragraph", "paragraph": {"rich_text": [{"text": {"content": "x" * 2001}}]}}]
    with pytest.raises(NotionError, match="2000"):
        check_children(too_long)
    too_deep = [{"type": "bulleted_list_item", "bulleted_list_item": {"rich_text": [], "children": [
        {"type": "bulleted_list_item", "bulleted_list_item": {"rich_text": [], "children": [
            {"type": "paragraph", "paragraph": {"rich_text": []}}]}}]}}]
    with pytest.raises(NotionError, match="nesting"):
        check_children(too_deep)
    with pytest.raises(NotionError, match="100"):
        check_children([{"type": "divider", "divider": {}}] * 101)


markdown_pieces = st.sampled_from([
    "# ", "## ", "- ", "1. ", "  - ", "    - ", "> ", "```python\n", "```\n", "**", "*", "`", "~~",
    "[link](https://example.com/x)", "[bad](nope)", "\n", "\n\n", " ", "word", "😀", "é", "|", "---\n",
])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(markdown_pieces, st.text(min_size=0, max_size=40)), max_size=80), st.integers(0, 3000))
def test_any_markdown_becomes_requests_notion_accepts(pieces, repeat):
    markdown = "".join(pieces) + ("z" * repeat)
    blocks = markdown_to_blocks(markdown)
    all_requests_valid(blocks)
