"""The LLM judge: reply parsing, and the client end to end against real HTTP servers — `transformers serve` on the
tiny model (protocol, cache, resume, the unparseable path) and a scripted local endpoint (scores, retries, the
parallelism bound, failures, the key)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from loguru import logger

from paraphrx.eval import judge
from paraphrx.eval.judge import CRITERIA, FAILED, JUDGE_METRIC, SCORED, UNPARSEABLE, JudgeError, JudgeSettings
from paraphrx.logs import run_logging

GOOD = {key: i for i, key in enumerate(CRITERIA)}  # task_fulfilment 0, usefulness 1, ... creativity 9


# --- parsing ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply",
    [
        json.dumps(GOOD),
        "Here is my evaluation:\n```json\n" + json.dumps(GOOD, indent=2) + "\n```\nThe answer is weak.",
        json.dumps({"scores": GOOD, "explanation": "short"}),
        json.dumps({"Task Fulfilment": 0, **{k: v for k, v in GOOD.items() if k != "task_fulfilment"}}),
        json.dumps({**GOOD, "usefulness": "1"}),  # a numeric string
        "{not json} " + json.dumps(GOOD),
    ],
)
def test_well_formed_replies(reply):
    scores, error = judge.parse_reply(reply)
    assert error is None and scores == {k: float(v) for k, v in GOOD.items()}


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("", "no JSON object"),
        ("I would rate this answer 7 out of 10.", "no JSON object"),
        ('{"task_fulfilment": 7, "usefulness": 6', "no JSON object"),  # cut off by max_tokens
        (
            json.dumps({k: v for k, v in GOOD.items() if k not in ("tone", "creativity")}),
            "missing criteria: tone, creativity",
        ),
        (json.dumps({**GOOD, "safety": 11}), "safety: 11 is outside 0-10"),
        (json.dumps({**GOOD, "depth": -1}), "depth: -1 is outside 0-10"),
        (json.dumps({**GOOD, "tone": "good"}), "tone: 'good' is not a number"),
        (json.dumps({**GOOD, "tone": True}), "tone: True is not a number"),
        (json.dumps({**GOOD, "tone": None}), "tone: None is not a number"),
        (json.dumps({**GOOD, "tone": [5]}), "tone: [5] is not a number"),
        ('{"task_fulfilment": NaN}', "missing criteria"),
    ],
)
def test_malformed_replies_say_why(reply, reason):
    scores, error = judge.parse_reply(reply)
    assert scores is None and reason in error


def test_the_request_shows_the_paraphrase_its_input_and_the_answer_and_the_ten_criteria():
    messages = json.loads(
        judge.judge_request(
            {
                "paraphrase": "WHAT IS 2+2",
                "input": "be brief",
                "generation": "4",
                "prompt": "### Instruction: WHAT IS 2+2",
            }
        )
    )
    assert [m["role"] for m in messages] == ["user"]  # one turn: Gemma's chat template refuses a system turn
    rubric, request = messages[0]["content"].split("\n\n## Request\n")
    assert [line.split(".")[0] for line in rubric.splitlines() if line[:2].rstrip(".").isdigit()] == [
        str(i) for i in range(1, 11)
    ]
    assert rubric.index("task_fulfilment") < rubric.index("usefulness") < rubric.index("creativity")
    assert request == "WHAT IS 2+2\n\n## Input\nbe brief\n\n## Answer\n4"
    no_input = json.loads(judge.judge_request({"paraphrase": None, "input": "", "generation": "x", "prompt": "P"}))
    assert no_input[0]["content"].endswith("## Request\nP\n\n## Answer\nx")  # no paraphrase column: the prompt


# --- a scripted OpenAI-compatible endpoint ----------------------------------------------------------------------------
class ScriptedEndpoint:
    """/v1/chat/completions on a local port: `reply(answer, attempt)` -> (HTTP status, reply text)."""

    def __init__(self, reply, delay: float = 0.0):
        self.reply, self.delay = reply, delay
        self.attempts: dict[str, int] = {}
        self.authorizations: set[str] = set()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = body["messages"][-1]["content"].rsplit("## Answer\n", 1)[1]
                with endpoint.lock:
                    endpoint.authorizations.add(self.headers.get("Authorization"))
                    attempt = endpoint.attempts[answer] = endpoint.attempts.get(answer, 0) + 1
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                time.sleep(endpoint.delay)
                status, text = endpoint.reply(answer, attempt)
                with endpoint.lock:
                    endpoint.in_flight -= 1
                message = {"role": "assistant", "content": text}
                payload = (
                    {"error": {"message": text}}
                    if status != 200
                    else {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                    }
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "5")  # the client's back-off honours it: fast retries in tests
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint_factory():
    endpoints = []

    def make(reply, delay=0.0):
        endpoints.append(ScriptedEndpoint(reply, delay))
        return endpoints[-1]

    yield make
    for endpoint in endpoints:
        endpoint.close()


def _records(answers, model="base"):
    return [
        {
            "model": model,
            "source": "alpaca",
            "prompt_count": 1,
            "bucket": 1,
            "instruct_type": "x",
            "prompt": f"P{i}",
            "paraphrase": f"request {i}",
            "input": "",
            "generation": a,
        }
        for i, a in enumerate(answers)
    ]


def _scores(task: int) -> str:
    return json.dumps({**GOOD, "task_fulfilment": task})


def test_scores_failures_unparseable_replies_and_the_parallelism_bound(tmp_path, endpoint_factory):
    def reply(answer, attempt):
        if answer == "broken":
            return 400, "prompt too long"  # not retried: a failed request
        if answer == "noise":
            return 200, "I think it is fine."
        return 200, _scores(int(answer[-1]))

    server = endpoint_factory(reply, delay=0.05)
    answers = ["good 7", "broken", "noise"] + [f"a{i}" for i in range(8)]
    settings = JudgeSettings("judge-model", server.url, concurrency=3, max_retries=2, timeout=10)
    judged = judge.judge_records(_records(answers), settings, tmp_path)
    by_answer = {r["generation"]: r for r in judged}
    assert by_answer["good 7"]["judge_status"] == SCORED and by_answer["good 7"][JUDGE_METRIC] == pytest.approx(0.7)
    assert by_answer["good 7"]["judge_scores"]["creativity"] == 9.0 and by_answer["good 7"]["judge_error"] is None
    assert by_answer["broken"]["judge_status"] == FAILED and "BadRequestError" in by_answer["broken"]["judge_error"]
    assert server.attempts["broken"] == 1
    assert by_answer["noise"]["judge_status"] == UNPARSEABLE and by_answer["noise"][JUDGE_METRIC] is None
    assert by_answer["noise"]["judge_reply"] == "I think it is fine."
    assert "no JSON object" in by_answer["noise"]["judge_error"]
    assert 2 <= server.max_in_flight <= 3  # parallel, within the bound

    # A re-run asks only for what failed: the replies, parseable or not, are cached.
    before = dict(server.attempts)
    again = judge.judge_records(_records(answers), settings, tmp_path)
    assert {a: n - before.get(a, 0) for a, n in server.attempts.items() if n != before.get(a, 0)} == {"broken": 1}
    assert [r["judge_status"] for r in again] == [r["judge_status"] for r in judged]


def test_flaky_answer_is_scored_after_the_retry(tmp_path, endpoint_factory):
    server = endpoint_factory(lambda answer, attempt: (503, "busy") if attempt == 1 else (200, _scores(4)))
    judged = judge.judge_records(_records(["x"]), JudgeSettings("m", server.url, max_retries=1), tmp_path)
    assert judged[0]["judge_status"] == SCORED and judged[0][JUDGE_METRIC] == pytest.approx(0.4)
    assert server.attempts == {"x": 2}


def test_a_refused_key_stops_with_one_line_and_the_key_never_reaches_the_log(tmp_path, endpoint_factory, monkeypatch):
    key = "sk-test-" + "Z9y8X7w6V5u4T3s2R1q0"
    server = endpoint_factory(lambda answer, attempt: (401, f"invalid key {key}"))
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    with run_logging("judge", tmp_path / "logs") as log:
        with pytest.raises(JudgeError) as err:
            judge.judge_records(_records(["a", "b"]), JudgeSettings("m", server.url, api_key=key), tmp_path / "cache")
        message = str(err.value)
        assert message.startswith(f"judge m at {server.url}/: AuthenticationError") and "\n" not in message
        assert server.authorizations == {f"Bearer {key}"}  # the key was sent ...
        logger.error("{}", message)
    text = log.read_text()
    assert "AuthenticationError" in text and key not in text  # ... and masked in the log


def test_the_key_comes_from_the_environment(tmp_path, endpoint_factory, monkeypatch):
    server = endpoint_factory(lambda answer, attempt: (200, _scores(5)))
    monkeypatch.setenv("JUDGE_API_KEY", "judge-env-key-123")
    judge.judge_records(_records(["a"]), JudgeSettings("m", server.url), tmp_path)
    assert server.authorizations == {"Bearer judge-env-key-123"}


def test_an_unreachable_endpoint_stops_with_one_line(tmp_path):
    from tests.conftest import _free_port

    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    with pytest.raises(JudgeError, match=r"judge m at .*: APIConnectionError"):
        judge.judge_records(_records(["a"]), JudgeSettings("m", url, max_retries=0, timeout=5), tmp_path)


# --- a real server: transformers serve on the tiny model ----------------------------------------------------------
def test_transformers_serve_protocol_cache_resume_and_unparseable_replies(tmp_path, judge_server):
    url, model = judge_server
    settings = JudgeSettings(model, url, concurrency=2, max_retries=1, timeout=120, max_tokens=8)
    records = _records(["The capital of France is Paris.", "Paris", "42"])
    records.append({**records[1], "model": "adapter"})  # another model, the same answer to the same prompt
    first = judge.judge_records(records[:2], settings, tmp_path)
    assert [r["judge_status"] for r in first] == [UNPARSEABLE, UNPARSEABLE]  # the tiny model's noise
    assert all(r["judge_reply"] and r["judge_error"] and r[JUDGE_METRIC] is None for r in first)
    cache_file = next(tmp_path.glob("*.jsonl"))
    assert len(cache_file.read_text(encoding="utf-8").splitlines()) == 2
    identity = json.loads(next(tmp_path.glob("*.json")).read_text(encoding="utf-8"))
    assert identity == {"judge": model, "rubric": judge.RUBRIC_VERSION, "max_tokens": 8, "temperature": 0.0}

    # Resume after a kill mid-write: the torn line is skipped and asked again; the cached answer is not.
    lines = cache_file.read_text(encoding="utf-8").splitlines()
    cache_file.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2], encoding="utf-8")
    all_judged = judge.judge_records(records, settings, tmp_path)
    assert [r["judge_status"] for r in all_judged] == [UNPARSEABLE] * 4
    assert all_judged[0]["judge_reply"] == first[0]["judge_reply"]  # from the cache
    entries = [json.loads(line) for line in cache_file.read_text(encoding="utf-8").splitlines()[2:]]
    assert len(entries) == 2  # the torn answer and "42"; the same answer twice is one request
    assert all_judged[3]["judge_reply"] == all_judged[1]["judge_reply"]

    # Everything cached: no request at all (an endpoint that does not exist is never contacted).
    offline = JudgeSettings(model, "http://127.0.0.1:9/v1", max_retries=0, timeout=1, max_tokens=8)
    assert [r["judge_reply"] for r in judge.judge_records(records, offline, tmp_path)] == [
        r["judge_reply"] for r in all_judged
    ]


def test_transformers_serve_wrong_model_is_a_failed_request_not_a_crash(tmp_path, judge_server):
    url, _ = judge_server  # the server is pinned to the tiny model: another name is a 400
    judged = judge.judge_records(_records(["x"]), JudgeSettings("other/model", url, max_retries=0), tmp_path)
    assert judged[0]["judge_status"] == FAILED and "BadRequestError" in judged[0]["judge_error"]
    assert not list(tmp_path.glob("*.jsonl"))  # a failure is not cached: the next run asks again
