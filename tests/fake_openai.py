"""A fake OpenAI-compatible server on loopback, for the tests and the benchmarks (which put tests/ on sys.path).

It answers chat completions and completions with `answer(body)` (default: synth's JSON list, built from the
excerpt in the prompt, so single-detail support holds), keeps every request's body, and misbehaves on
purpose where told: 429 with Retry-After, 500, replies slower than a client's time-out, bodies that are not
JSON, contents that are not JSON, a 429 for requests beyond a capacity, a gate that holds requests.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def synth_answer(body: dict) -> str:
    """Two questions on the fourth word of the prompt's excerpt (a biography for a character prompt)."""
    prompt = body["messages"][0]["content"]
    context = re.search(r"=== [A-Z ]+ ===\n(.*?)\n=== END", prompt, re.DOTALL).group(1)
    word = re.findall(r"\w+", context)[3]
    if '"character"' in prompt:
        return json.dumps([{"character": "Someone", "biography": f"Someone saw {word}."}])
    return json.dumps([{"question": f"Which word comes fourth in {hashlib.md5(prompt.encode()).hexdigest()[:6]}?",
                        "answer": word}, {"question": "And again?", "answer": word}])


class FakeServer:
    def __init__(self, answer=synth_answer, faults=None, garbage=frozenset(), gate_after=None, capacity=None,
                 latency=0.0):
        self.answer = answer  # request body -> the reply's content
        self.faults = faults or {}  # prompt number (in order of first arrival) -> fault on its first attempt
        self.garbage = garbage  # prompt numbers whose every answer has content that is not JSON
        self.gate_after = gate_after  # answer this many requests, then hold the rest until open() is called
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.order, self.attempts, self.answered = {}, defaultdict(list), Counter()
        self.requests = []  # (path, body) of every request, in order of arrival
        self.authorizations = set()  # every Authorization header seen
        self.admitted = 0
        self.capacity, self.latency = capacity, latency  # more requests than `capacity` at once get a 429
        self.busy = self.over_capacity = 0
        self.first_request = self.last_answer = None  # time.monotonic() of each
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *_: None  # a killed client's broken pipe is expected
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real providers

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = hashlib.sha256(json.dumps(body.get("messages", body.get("prompt"))).encode()).hexdigest()
                with server.lock:
                    server.first_request = server.first_request or time.monotonic()
                    server.requests.append((self.path, body))
                    server.authorizations.add(self.headers.get("Authorization"))
                    number = server.order.setdefault(key, len(server.order))
                    attempt = len(server.attempts[key])
                    server.attempts[key].append(time.monotonic())
                    # admit under the lock: counting answers instead let concurrent requests slip past the gate
                    held = server.gate_after is not None and server.admitted >= server.gate_after
                    server.admitted += not held
                if held:
                    server.gate.wait()
                    return  # released after the client was killed: nobody is listening
                if not server.take_a_seat():
                    return self.reply(429, {"error": {"message": "too many requests in flight"}})
                self.answer_with(body, key, number, attempt)

            def answer_with(self, body, key, number, attempt):
                fault = server.faults.get(number) if attempt == 0 else None
                if fault == "429":
                    return self.reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.3"})
                if fault == "500":
                    return self.reply(500, {"error": {"message": "boom"}})
                if fault == "slow":
                    time.sleep(3.0)  # the fault itself: longer than the client's 1 s time-out
                if fault == "bad_body":
                    return self.reply(200, None, raw=b"<html>proxy error</html>")
                content = "I'd rather not." if number in server.garbage else server.answer(body)
                if fault in ("garbage", "wrong_shape"):  # a 200 whose content is not the prompt's JSON
                    content = "I'd rather not." if fault == "garbage" else json.dumps(["a question?", "42"])
                self.reply(200, completion(body, content, chat=self.path.endswith("/chat/completions")))
                with server.lock:
                    server.answered[key] += 1
                    server.last_answer = time.monotonic()

            def reply(self, status, payload, headers=None, raw=None):
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def take_a_seat(self) -> bool:
        """Wait out the latency of a provider; False (a 429) when `capacity` requests are in flight already."""
        if self.capacity is None:
            time.sleep(self.latency)
            return True
        with self.lock:
            full = self.busy >= self.capacity
            self.over_capacity += full
            self.busy += not full
        if full:
            return False
        time.sleep(self.latency)  # what keeps requests in flight
        with self.lock:  # free before answering: the client may send its next one at once
            self.busy -= 1
        return True

    def close(self):
        self.gate.set()
        self.httpd.shutdown()


def completion(body: dict, content: str, chat: bool = True) -> dict:
    """A chat completion (or, chat=False, a text completion) whose one choice is `content`."""
    usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    if not chat:
        return {"id": "x", "object": "text_completion", "created": 0, "model": body["model"], "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop", "text": content}]}
    return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}
