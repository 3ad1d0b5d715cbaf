"""OpenAI-compatible HTTP server on aiohttp.

    POST /v1/completions, POST /v1/chat/completions (both with SSE streaming), GET /v1/models, GET /health

AsyncEngine drives an LLMEngine from asyncio: one task runs engine steps on a worker thread, back to back while
there is work; requests and cancellations are applied between steps (the engine is never touched while a step
runs), and each step's outputs are routed to the waiting handlers. A handler whose client goes away (a failed
write, or aiohttp cancelling the handler) aborts its requests, which frees their KV pages and state slots.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from .engine import LLMEngine, RequestOutput
from .protocol import ParsedRequest, RequestError, parse_chat, parse_completion

log = logging.getLogger("model.serve")

ENGINE = web.AppKey("engine", LLMEngine)


class EngineDeadError(RuntimeError):
    pass


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._pending_adds: list[tuple[str, list[int], object]] = []
        self._pending_aborts: list[str] = []
        self._routes: dict[str, asyncio.Queue] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def submit(self, request_id: str, prompt_ids: list[int], params, queue: asyncio.Queue) -> None:
        """Queues a checked request; its RequestOutputs (or an exception) will arrive on `queue`."""
        self._routes[request_id] = queue
        self._pending_adds.append((request_id, prompt_ids, params))
        self._wake.set()

    def abort(self, request_id: str) -> None:
        if self._routes.pop(request_id, None) is not None:
            self._pending_aborts.append(request_id)
            self._wake.set()

    def _apply_pending(self) -> None:
        adds, self._pending_adds = self._pending_adds, []
        for rid, prompt_ids, params in adds:
            try:
                self.engine.add_request(prompt_ids, params, rid)
            except ValueError as e:     # checked already; a late failure still reaches the client
                queue = self._routes.pop(rid, None)
                if queue is not None:
                    queue.put_nowait(RequestError(str(e)))
        aborts, self._pending_aborts = self._pending_aborts, []
        for rid in aborts:
            self.engine.abort(rid)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._apply_pending()
            while self.engine.has_unfinished():
                try:
                    outputs = await loop.run_in_executor(self._executor, self.engine.step)
                except Exception as e:  # a failed step: fail its requests loudly, free them, keep serving
                    log.exception("engine step failed")
                    self._fail_all(e)
                    break
                for out in outputs:
                    queue = self._routes.get(out.request_id)
                    if queue is not None:
                        queue.put_nowait(out)
                for rid in {out.request_id for out in outputs if out.finished}:
                    if rid not in self.engine.requests:          # all n completions are done
                        self._routes.pop(rid, None)
                self._apply_pending()
                await asyncio.sleep(0)   # let handlers run between steps

    def _fail_all(self, error: Exception) -> None:
        for rid in list(self.engine.requests):
            self.engine.abort(rid)
        routes, self._routes = self._routes, {}
        for queue in routes.values():
            queue.put_nowait(EngineDeadError(f"engine step failed: {type(error).__name__}: {error}"))


# ---------------------------------------------------------------------- HTTP handlers
def _error(e: RequestError) -> web.Response:
    return web.json_response(e.body(), status=e.status)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class OpenAIServer:
    def __init__(self, async_engine: AsyncEngine, model_name: str):
        self.aengine = async_engine
        self.engine = async_engine.engine
        self.model_name = model_name
        self.created = int(time.time())

    def routes(self) -> list:
        return [web.post("/v1/completions", self.completions), web.post("/v1/chat/completions", self.chat),
                web.get("/v1/models", self.models), web.get("/health", self.health)]

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **self.engine.stats()})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self.created, "owned_by": "nemotron-kernels",
            "max_model_len": self.engine.max_model_len}]})

    async def _body(self, request: web.Request):
        try:
            raw = await request.read()
        except web.HTTPException:
            raise
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(f"malformed JSON body: {e}") from None
        except RecursionError:              # json's C decoder gives up on deep nesting (a 500 before)
            raise RequestError("malformed JSON body: nested too deeply") from None

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            req = parse_completion(await self._body(request), self.model_name)
            prompt_ids = [self._check(p, req) for p in req.prompts]
        except RequestError as e:
            return _error(e)
        return await self._respond(request, req, prompt_ids, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            req = parse_chat(await self._body(request), self.model_name)
            tok = self.engine.tokenizer
            if tok is None:
                raise RequestError("this server has no tokenizer: chat needs one (use /v1/completions with ids)")
            extra = dict(req.chat_template_kwargs)
            if req.tools is not None:
                extra["tools"] = req.tools
            try:
                text = tok.apply_chat_template(req.messages, add_generation_prompt=True, **extra)
            except ValueError as e:
                raise RequestError(str(e), "messages") from None
            prompt_ids = [self._check(text, req, add_special_tokens=False)]
        except RequestError as e:
            return _error(e)
        return await self._respond(request, req, prompt_ids, chat=True)

    def _check(self, prompt, req: ParsedRequest, add_special_tokens: bool = True) -> list[int]:
        """Tokenizes and checks one prompt; fills in the chat default max_tokens (the rest of the context)."""
        ctx = self.engine.max_model_len
        try:
            ids = self.engine.check_request(prompt, req.params, add_special_tokens=add_special_tokens)
        except ValueError as e:
            raise RequestError(str(e), "prompt" if not req.chat else "messages") from None
        if not req.max_tokens_given:
            req.params = dataclasses.replace(req.params, max_tokens=ctx - len(ids))
        elif len(ids) + req.params.max_tokens > ctx:
            raise RequestError(f"this model's context is {ctx} tokens; the request needs {len(ids)} prompt + "
                               f"{req.params.max_tokens} completion tokens; lower max_tokens or shorten the prompt",
                               "max_tokens")
        return ids

    async def _respond(self, request: web.Request, req: ParsedRequest, prompt_ids: list[list[int]],
                       chat: bool) -> web.StreamResponse:
        """Runs the request's prompts (n completions each); choice p * n + i is completion i of prompt p."""
        resp_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        queue: asyncio.Queue = asyncio.Queue()
        rids = [f"{resp_id}-{p}" for p in range(len(prompt_ids))]
        n = req.params.n
        choice_of = {(rid, i): p * n + i for p, rid in enumerate(rids) for i in range(n)}
        for rid, ids in zip(rids, prompt_ids):
            self.aengine.submit(rid, ids, req.params, queue)
        unfinished = set(choice_of)
        try:
            if req.stream:
                return await self._stream(request, req, queue, unfinished, choice_of, resp_id, chat, prompt_ids)
            finals: dict[int, RequestOutput] = {}
            while unfinished:
                out = await queue.get()
                if isinstance(out, Exception):
                    return self._failure(out)
                if out.finished:
                    finals[choice_of[out.request_id, out.index]] = out
                    unfinished.discard((out.request_id, out.index))
            choices = []
            for c in range(len(choice_of)):
                o = finals[c]
                choice = {"index": c, "finish_reason": o.finish_reason, "logprobs": None}
                if chat:
                    choice["message"] = {"role": "assistant", "content": o.text}
                else:
                    choice["text"] = o.text
                if req.return_token_ids:
                    choice["token_ids"] = o.token_ids
                choices.append(choice)
            usage = _usage(sum(len(p) for p in prompt_ids), sum(len(o.token_ids) for o in finals.values()))
            return web.json_response({"id": resp_id, "object": "chat.completion" if chat else "text_completion",
                                      "created": int(time.time()), "model": self.model_name, "choices": choices,
                                      "usage": usage})
        finally:
            for rid in {rid for rid, _ in unfinished}:   # client gone, handler cancelled or failed: free the cache
                self.aengine.abort(rid)

    def _failure(self, error: Exception) -> web.Response:
        if isinstance(error, RequestError):
            return _error(error)
        return web.json_response({"error": {"message": str(error), "type": "internal_error", "param": None,
                                            "code": None}}, status=500)

    async def _stream(self, request, req, queue, unfinished, choice_of, resp_id, chat, prompt_ids):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        created, obj = int(time.time()), "chat.completion.chunk" if chat else "text_completion"

        async def send(payload) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
            await resp.write(f"data: {data}\n\n".encode())

        def chunk(choices, usage=None):
            body = {"id": resp_id, "object": obj, "created": created, "model": self.model_name, "choices": choices}
            if usage is not None:
                body["usage"] = usage
            return body

        try:
            await self._stream_events(req, queue, unfinished, choice_of, chat, prompt_ids, send, chunk)
            await resp.write_eof()
        except ConnectionError:          # the client went away; _respond aborts what is left
            pass
        return resp

    async def _stream_events(self, req, queue, unfinished, choice_of, chat, prompt_ids, send, chunk):
        if chat:
            await send(chunk([{"index": c, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                               "finish_reason": None} for c in range(len(choice_of))]))
        completion_tokens = 0
        while unfinished:
            out = await queue.get()
            if isinstance(out, Exception):
                await send({"error": {"message": str(out), "type": "internal_error", "param": None, "code": None}})
                return
            if not (out.new_text or out.finished or req.return_token_ids):
                continue                 # nothing to show yet (text held back or an incomplete character)
            key = (out.request_id, out.index)
            choice = {"index": choice_of[key], "logprobs": None, "finish_reason": out.finish_reason}
            if chat:
                choice["delta"] = {"content": out.new_text} if out.new_text or not out.finished else {}
            else:
                choice["text"] = out.new_text
            if req.return_token_ids:
                choice["token_ids"] = out.new_token_ids
            await send(chunk([choice]))
            if out.finished:
                unfinished.discard(key)
                completion_tokens += len(out.token_ids)
        if req.include_usage:
            await send(chunk([], _usage(sum(len(p) for p in prompt_ids), completion_tokens)))
        await send("[DONE]")


def create_app(engine: LLMEngine, model_name: str = "nemotron-h") -> web.Application:
    """The aiohttp application; the engine loop starts and stops with the app."""
    app = web.Application(client_max_size=64 * 2**20)
    aengine = AsyncEngine(engine)
    server = OpenAIServer(aengine, model_name)
    app.add_routes(server.routes())
    app[ENGINE] = engine

    async def on_startup(app):
        await aengine.start()

    async def on_cleanup(app):
        await aengine.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def start_server(app: web.Application, host: str = "127.0.0.1", port: int = 8000) -> tuple[web.AppRunner, int]:
    """Starts serving `app` (port 0: any free port); returns the runner and the bound port."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, bound
