"""What /search makes of the text after the command: the question, its filters, its cache key."""
import pytest

from handlers.search import format_answer, parse_search_query
from integrations.perplexity import PerplexitySearch, SearchAnswer, SearchQuery, Source


def test_question_is_trimmed_and_whitespace_collapsed():
    query = parse_search_query("  rust \n\n async\truntimes  ")
    assert query == SearchQuery("rust async runtimes")


def test_empty_or_blank_text_is_no_query():
    assert parse_search_query("") is None
    assert parse_search_query("  \n ") is None


def test_filters_alone_are_no_query():
    assert parse_search_query("week: site:example.com") is None


def test_bot_mention_is_dropped_whatever_its_case():
    query = parse_search_query("what does @SwitchBot_Bot know about tokio", bot_username="switchbot_bot")
    assert query is not None and query.text == "what does know about tokio"


def test_other_mentions_stay_in_the_question():
    query = parse_search_query("latest posts by @rustlang", bot_username="switchbot_bot")
    assert query is not None and query.text == "latest posts by @rustlang"


@pytest.mark.parametrize("prefix", ["day", "week", "month", "year", "WEEK"])
def test_recency_prefix_becomes_the_recency_filter(prefix):
    query = parse_search_query(f"{prefix}: rust async")
    assert query == SearchQuery("rust async", recency=prefix.lower())


def test_recency_prefix_may_be_glued_to_the_first_word():
    assert parse_search_query("week:rust async") == SearchQuery("rust async", recency="week")


def test_recency_word_later_in_the_question_is_just_a_word():
    query = parse_search_query("what happened this week: news")
    assert query == SearchQuery("what happened this week: news")


def test_site_filters_become_domain_filters_in_order():
    query = parse_search_query("rust async site:Tokio.rs -site:spam.com site:https://docs.rs/tokio")
    assert query == SearchQuery("rust async", domains=("tokio.rs", "-spam.com", "docs.rs"))


def test_repeated_domains_are_kept_once():
    query = parse_search_query("q site:a.com site:a.com")
    assert query is not None and query.domains == ("a.com",)


def test_a_site_word_without_a_domain_stays_in_the_question():
    query = parse_search_query("what is site: in google")
    assert query is not None and query.text == "what is site: in google" and query.domains == ()


def test_long_questions_are_capped_at_a_word_boundary():
    query = parse_search_query("word " * 400, max_chars=1000)
    assert query is not None
    assert len(query.text) <= 1000 and query.text.endswith("word")


def test_filters_reach_the_search_tool():
    client = PerplexitySearch(api_key="k", base_url="http://127.0.0.1:9/v1")
    arguments, extra = client.request(SearchQuery("rust", recency="week", domains=("example.com", "-spam.com")))
    assert arguments == {
        "model": "perplexity/sonar",
        "input": "rust",
        "instructions": client.instructions,
        "max_output_tokens": 1024,
    }
    assert extra["tools"] == [
        {
            "type": "web_search",
            "max_results": 5,
            "filters": {"search_recency_filter": "week", "search_domain_filter": ["example.com", "-spam.com"]},
        }
    ]
    assert extra["tool_choice"] == {"type": "web_search"}


def test_a_preset_replaces_the_model_and_forced_tool():
    client = PerplexitySearch(api_key="k", base_url="http://127.0.0.1:9/v1", preset="fast")
    arguments, extra = client.request(SearchQuery("rust"))
    assert "model" not in arguments and extra == {"preset": "fast"}


def test_cache_key_ignores_case_but_not_filters_or_model():
    client = PerplexitySearch(api_key="k", base_url="http://127.0.0.1:9/v1")
    other_model = PerplexitySearch(api_key="k", base_url="http://127.0.0.1:9/v1", model="openai/gpt-5.1")
    base = client.cache_key(SearchQuery("Rust Async"))
    assert base == client.cache_key(SearchQuery("rust async"))
    assert base != client.cache_key(SearchQuery("rust async", recency="week"))
    assert base != client.cache_key(SearchQuery("rust async", domains=("example.com",)))
    assert base != other_model.cache_key(SearchQuery("rust async"))
    assert client.cache_key(SearchQuery("q", domains=("a.com", "b.com"))) == client.cache_key(
        SearchQuery("q", domains=("B.com", "a.com"))
    )


def test_sources_are_numbered_links_and_odd_titles_are_escaped():
    answer = SearchAnswer(
        "Tokio [1].",
        (Source("Tokio [docs]", "https://tokio.rs/a (b)"), Source("", "https://docs.rs/"), Source("x", "ftp://x")),
        "perplexity/sonar",
    )
    assert format_answer(answer) == (
        "Tokio [1].\n\n**Sources**\n1. [Tokio \\[docs\\]](https://tokio.rs/a%20%28b%29)\n2. [docs\\.rs](https://docs.rs/)"
    )


def test_stored_answer_round_trips_through_json():
    answer = SearchAnswer("t", (Source("a", "https://a.example"),), "perplexity/sonar", response_id="resp_1")
    assert SearchAnswer.from_json(answer.to_json()) == answer
    with pytest.raises(ValueError):
        SearchAnswer.from_json('{"text": "t"}')
