#!/usr/bin/env python3
"""A sound task model and judge for benches/llama_server.sh, in front of a
real server for every other model.

`task-model` answers well only when its system prompt says both "cite the
tool result" and "answer in one sentence"; `judge-model` grades by word
overlap with the reference and ends with `SCORE: n` (the same behaviour as
the test server in tests/it/support). A request for any other model is
forwarded byte for byte to UPSTREAM (the llama-cpp-python server), and its
answer returned as is, so the model sees exactly what Whetstone sent.

Also writes the bench's traces: `--write-traces FILE N` writes N Whetstone
JSONL episodes of the `Controller` prompt and exits.

Usage: llama_server_stub.py PORT UPSTREAM_BASE_URL
"""

import json
import re
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CITE = "cite the tool result"
ONE_SENTENCE = "answer in one sentence"
CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Perth", "Dakar"]


def good_answer(tool_result):
    return f"According to the tool result, {tool_result}."


def write_traces(path, n):
    with open(path, "w") as out:
        for idx in range(n):
            city = CITIES[idx % len(CITIES)]
            question = f"What is the weather in {city} right now? (#{idx})"
            result = f"it is {10 + idx} degrees and clear in {city}"
            episode = {
                "id": f"bench-{idx:03}",
                "prompt": {"name": "Controller", "version": "1",
                           "text": "You are the Controller."},
                "input": question,
                "steps": [{
                    "kind": "llm", "name": "gpt-test",
                    "llm": {"input_messages": [
                        {"role": "system", "content": "You are the Controller."},
                        {"role": "user", "content": question},
                        {"role": "tool", "content": result}],
                        "output_text": good_answer(result)}}],
                "rewards": {"task_success": 1.0},
            }
            out.write(json.dumps(episode) + "\n")


def task_answer(messages):
    system = next((m["content"].lower() for m in messages
                   if m["role"] in ("system", "developer")), "")
    tool_result = next((m["content"][len("Tool result:\n"):] for m in messages
                        if m["content"].startswith("Tool result:\n")),
                       "nothing came back")
    cite, short = CITE in system, ONE_SENTENCE in system
    if cite and short:
        return good_answer(tool_result)
    if cite:
        return (f"According to the tool result, {tool_result}. There is more background "
                "I could add, such as how these numbers are usually gathered.")
    if short:
        return f"I think {tool_result}."
    return (f"Well, I looked into it and I think {tool_result}, although I would like "
            "to double check a few things first.")


def words(text):
    return [w.lower() for w in re.split(r"[^0-9A-Za-z]+", text) if w]


def between(text, start, end):
    at = text.find(start)
    if at < 0:
        return ""
    at += len(start)
    to = text.find(end, at)
    return text[at:to].strip() if to >= 0 else ""


def judge(request):
    reference = words(between(request, "word for word):\n", "\n\nAgent's answer:"))
    response = words(between(request, "Agent's answer:\n", "\n\nGrade the agent"))
    total, common = len(reference), 0
    for word in response:
        if word in reference:
            reference.remove(word)
            common += 1
    f1 = 0.0
    if common:
        p, r = common / len(response), common / total
        f1 = 2 * p * r / (p + r)
    return f"The answer overlaps the reference.\nSCORE: {round(f1 * 10)}"


class Handler(BaseHTTPRequestHandler):
    upstream = ""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = json.loads(body)
        model = request.get("model", "")
        messages = [{"role": m.get("role", ""), "content": m.get("content") or ""}
                    for m in request.get("messages", [])]
        if model == "task-model":
            text = task_answer(messages)
        elif model == "judge-model":
            text = judge(messages[-1]["content"] if messages else "")
        else:
            return self.forward(body)
        prompt_tokens = sum(len(m["content"]) // 4 + 1 for m in messages)
        reply = {
            "id": "stub", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens,
                      "completion_tokens": len(text) // 4 + 1,
                      "total_tokens": prompt_tokens + len(text) // 4 + 1},
        }
        self.send(200, json.dumps(reply).encode())

    def forward(self, body):
        req = urllib.request.Request(
            self.upstream + self.path[len("/v1"):], data=body, method="POST",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=900) as res:
                self.send(res.status, res.read())
        except urllib.error.HTTPError as err:
            self.send(err.code, err.read())

    def send(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main():
    if sys.argv[1] == "--write-traces":
        write_traces(sys.argv[2], int(sys.argv[3]))
        return
    Handler.upstream = sys.argv[2].rstrip("/")
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()


if __name__ == "__main__":
    main()
