"""The API's shared HTTP helpers: every parsing error is a 400/404/413 naming its field.

Plain-data helpers are called directly; the ones that read a request get a real
``web.Request`` (aiohttp's ``make_mocked_request``) or, for bodies, a real server on
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

import vigil.collector
from vigil.collector.api.http import (
    MAX_ID,
    MAX_JSON_BODY,
    MAX_TEXT,
    ApiError,
    bearer_matches,
    body_str,
    body_time,
    choice,
    has_agent_token,
    int_param,
    item_id,
    json_body,
    json_response,
    query_params,
    require_admin,
    require_reader,
)
from vigil.collector.config import CollectorConfig
from vigil.collector.identity.operators import config_principals
from vigil.collector.identity.roles import Directory
from vigil.collector.keys import config_key, directory_key


def request_to(
    path: str,
    config: CollectorConfig | None = None,
    *,
    token: str | None = None,
    match_info: dict[str, str] | None = None,
) -> web.Request:
    """A GET request for ``path`` on an app holding ``config``, with a bearer ``token``."""
    app = web.Application()
    if config is not None:
        app[config_key] = config
        app[directory_key] = Directory(config_principals(config.auth.admin_tokens))
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return make_mocked_request("GET", path, headers, app=app, match_info=match_info or {})


def api_error(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args, **kwargs)
    return caught.value


# --------------------------------------------------------------------------- query


def test_query_params_returns_the_known_parameters() -> None:
    request = request_to("/x?state=open&limit=5")
    assert query_params(request, ("state", "limit", "offset")) == {"state": "open", "limit": "5"}


def test_an_unknown_query_parameter_is_400_naming_it_and_listing_the_known_ones() -> None:
    error = api_error(query_params, request_to("/x?stat=open"), ("state", "limit"))
    assert (error.status, error.field) == (400, "stat")
    assert error.message == "unknown query parameter (known: state, limit)"


def test_any_query_parameter_is_unknown_where_none_is_taken() -> None:
    error = api_error(query_params, request_to("/x?verbose=1"), ())
    assert (error.status, error.field) == (400, "verbose")
    assert "(known: none)" in error.message


def test_a_repeated_query_parameter_is_400_naming_it() -> None:
    error = api_error(query_params, request_to("/x?host=a&host=b"), ("host",))
    assert (error.status, error.field, error.message) == (
        400,
        "host",
        "query parameter given more than once",
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 7), ("0", 0), ("10", 10), ("0010", 10)],
    ids=["absent is the default", "low bound", "high bound", "leading zeros"],
)
def test_int_param_accepts_digits_within_the_bounds(raw: str | None, expected: int) -> None:
    query = {} if raw is None else {"n": raw}
    assert int_param(query, "n", 7, 0, 10) == expected


@pytest.mark.parametrize(
    "raw",
    ["11", "-1", "+1", " 1", "1.0", "1e3", "", "٣", "1" * 20],
    ids=[
        "over",
        "negative",
        "plus sign",
        "space",
        "fraction",
        "exponent",
        "empty",
        "non-ascii digit",
        "20 digits",
    ],
)
def test_int_param_refuses_anything_but_digits_in_range_naming_the_parameter(raw: str) -> None:
    error = api_error(int_param, {"n": raw}, "n", 7, 0, 10)
    assert (error.status, error.field) == (400, "n")
    assert error.message == f"n must be an integer from 0 to 10, got {raw!r}"


def test_choice_returns_the_default_when_absent_and_refuses_other_values() -> None:
    assert choice({}, "kind", ("a", "b"), "a") == "a"
    assert choice({"kind": "b"}, "kind", ("a", "b"), "a") == "b"
    error = api_error(choice, {"kind": "c"}, "kind", ("a", "b"), "a")
    assert (error.status, error.field) == (400, "kind")
    assert error.message == "kind must be one of ['a', 'b'], got 'c'"


# --------------------------------------------------------------------------- path


def test_item_id_reads_the_path_segment() -> None:
    assert item_id(request_to("/x/42", match_info={"item_id": "42"}), "silence") == 42


def test_an_id_over_64_bits_is_the_same_404_as_an_unknown_one() -> None:
    raw = str(MAX_ID + 1)
    error = api_error(item_id, request_to(f"/x/{raw}", match_info={"item_id": raw}), "problem")
    assert (error.status, error.field, error.message) == (404, "id", f"no problem with id {raw}")


# --------------------------------------------------------------------------- tokens


def test_bearer_matches_any_configured_token_with_a_case_insensitive_scheme() -> None:
    tokens = ("one", "two")
    assert bearer_matches(request_to("/x", token="two"), tokens)
    lower = make_mocked_request("GET", "/x", {"Authorization": "bearer one"})
    assert bearer_matches(lower, tokens)


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic one", "Bearer on", "Bearer one1", "one"],
    ids=["none", "no token", "blank token", "other scheme", "prefix", "longer", "no scheme"],
)
def test_bearer_refuses_anything_but_an_exact_token(header: str) -> None:
    request = make_mocked_request("GET", "/x", {"Authorization": header} if header else {})
    assert not bearer_matches(request, ("one",))


def test_agent_and_admin_tokens_are_not_interchangeable(collector_config) -> None:
    agent = collector_config.auth.agent_tokens[0]
    admin = collector_config.auth.admin_tokens[0]
    assert has_agent_token(request_to("/x", collector_config, token=agent))
    assert not has_agent_token(request_to("/x", collector_config, token=admin))
    error = api_error(require_admin, request_to("/x", collector_config, token=agent))
    assert (error.status, error.message) == (401, "missing or unknown operator token")
    assert error.headers == {"WWW-Authenticate": 'Bearer realm="vigil"'}
    require_admin(request_to("/x", collector_config, token=admin))


def test_open_read_opens_reads_but_not_writes(collector_config) -> None:
    open_read = dataclasses.replace(
        collector_config, auth=dataclasses.replace(collector_config.auth, open_read=True)
    )
    require_reader(request_to("/x", open_read))
    assert api_error(require_reader, request_to("/x", collector_config)).status == 401
    assert api_error(require_admin, request_to("/x", open_read)).status == 401


# --------------------------------------------------------------------------- body fields


def test_body_str_returns_the_string_or_none_when_optional_and_absent() -> None:
    assert body_str({"note": "ok"}, "note") == "ok"
    assert body_str({}, "note") is None
    assert body_str({"note": None}, "note") is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "by is required"),
        ({"by": None}, "by is required"),
        ({"by": 3}, "by must be a string"),
        ({"by": "  "}, "by must not be empty"),
        ({"by": "x" * (MAX_TEXT + 1)}, f"by must be at most {MAX_TEXT} characters"),
    ],
    ids=["absent", "null", "not a string", "blank", "too long"],
)
def test_a_bad_required_string_is_400_naming_the_field(body: dict, message: str) -> None:
    error = api_error(body_str, body, "by", required=True)
    assert (error.status, error.field, error.message) == (400, "by", message)


def test_body_time_takes_numbers_and_the_default_when_absent() -> None:
    assert body_time({"at": 5}, "at", 1.0) == 5.0
    assert body_time({"at": 2.5}, "at", 1.0) == 2.5
    assert body_time({}, "at", 1.0) == 1.0


@pytest.mark.parametrize(
    "value",
    [True, "5", float("inf"), float("nan"), [5]],
    ids=["bool", "text", "inf", "nan", "list"],
)
def test_body_time_refuses_what_is_not_a_finite_number(value: Any) -> None:
    error = api_error(body_time, {"at": value}, "at", 1.0)
    assert (error.status, error.field) == (400, "at")


# --------------------------------------------------------------------------- JSON bodies


async def _echo(request: web.Request) -> web.Response:
    """Answers with the parsed body, or the ApiError as the app's middleware would."""
    try:
        return web.json_response(await json_body(request, ("by", "note")))
    except ApiError as exc:
        return web.json_response({"error": exc.message, "field": exc.field}, status=exc.status)


def post_to_echo(
    data: bytes | None,
    *,
    chunked: bool = False,
    content_type: str | None = "application/json",
) -> tuple[int, Any]:
    """POST ``data`` to a one-route server on 127.0.0.1 that runs :func:`json_body`, with
    ``content_type`` (aiohttp's own default for bytes when None)."""

    async def main() -> tuple[int, Any]:
        app = web.Application()
        app.router.add_post("/", _echo)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:

            async def pieces() -> Any:
                yield data or b""

            body: Any = pieces() if chunked else data
            headers = {"Content-Type": content_type} if content_type else {}
            async with client.post("/", data=body, headers=headers) as reply:
                return reply.status, await reply.json()

    return asyncio.run(main())


def test_json_body_parses_an_object_and_an_empty_body_is_empty() -> None:
    assert post_to_echo(json.dumps({"by": "a"}).encode()) == (200, {"by": "a"})
    assert post_to_echo(b"") == (200, {})


@pytest.mark.parametrize(
    ("data", "status", "field"),
    [
        (b"{nope", 400, None),
        (b"[1]", 400, None),
        (b'{"by": "a", "who": 1}', 400, "who"),
        (b"\xff\xfe", 400, None),
    ],
    ids=["not json", "not an object", "unknown field", "not utf-8"],
)
def test_a_bad_json_body_is_400(data: bytes, status: int, field: str | None) -> None:
    got, reply = post_to_echo(data)
    assert (got, reply["field"]) == (status, field)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_json_body_over_the_limit_is_413_however_it_is_sent(chunked: bool) -> None:
    data = json.dumps({"note": "x" * MAX_JSON_BODY}).encode()
    status, reply = post_to_echo(data, chunked=chunked)
    assert (status, reply["error"]) == (413, f"request body over {MAX_JSON_BODY} bytes")


def test_unknown_field_names_are_cut_to_64_characters() -> None:
    name = "k" * 100
    status, reply = post_to_echo(json.dumps({name: 1}).encode())
    assert (status, reply["field"]) == (400, "k" * 64)


@pytest.mark.parametrize(
    "content_type",
    [
        None,  # aiohttp sends application/octet-stream for bytes
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-16",
        "application/jsonx",
    ],
)
def test_a_body_that_is_not_declared_utf8_json_is_415_naming_the_header(
    content_type: str | None,
) -> None:
    status, reply = post_to_echo(b'{"by": "a"}', content_type=content_type)
    assert (status, reply["field"]) == (415, "Content-Type")
    assert "application/json" in reply["error"]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON; charset=UTF-8", "application/json;charset=utf-8"],
)
def test_json_with_the_utf8_charset_or_none_is_accepted(content_type: str) -> None:
    assert post_to_echo(b'{"by": "a"}', content_type=content_type) == (200, {"by": "a"})


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-32"])
def test_json_in_utf16_or_utf32_is_400_even_when_declared_json(codec: str) -> None:
    status, reply = post_to_echo(json.dumps({"by": "a"}).encode(codec))
    assert status == 400
    assert reply["field"] is None


def test_an_empty_body_needs_no_content_type() -> None:
    assert post_to_echo(b"", content_type=None) == (200, {})


# --------------------------------------------------------------------------- JSON responses


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_json_responses_refuse_non_finite_numbers(value: float) -> None:
    """A non-finite number never becomes a ``NaN``/``Infinity`` token in a reply."""
    with pytest.raises(ValueError):
        json_response({"silence": {"ends_at": value}})


def test_json_responses_are_standard_json() -> None:
    reply = json_response({"a": [1, 2.5, None]}, status=201, headers={"X-A": "b"})
    assert (reply.status, reply.headers["X-A"]) == (201, "b")
    assert reply.content_type == "application/json"
    assert json.loads(reply.text) == {"a": [1, 2.5, None]}


def test_every_json_reply_of_the_collector_goes_through_the_shared_helper() -> None:
    """Only ``api/http.py`` may call aiohttp's ``json_response`` (which allows NaN)."""
    root = Path(vigil.collector.__file__).parent
    callers = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "web.json_response(" in path.read_text(encoding="utf-8")
    )
    assert callers == ["api/http.py"]


@pytest.mark.parametrize(
    "body",
    [b'{"by": NaN}', b'{"by": Infinity}', b'{"by": -Infinity}'],
    ids=["NaN", "Infinity", "-Infinity"],
)
def test_non_standard_json_constants_in_a_body_are_400(body: bytes) -> None:
    status, reply = post_to_echo(body)
    assert status == 400
    assert "not a JSON number" in reply["error"]
