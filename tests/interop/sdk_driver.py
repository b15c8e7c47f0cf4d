#!/usr/bin/env python3
"""Interop driver: run ONE conversation turn against the gateway with the
third-party PyPI client ``xiaozhi-sdk`` 0.5.1, using only its public API, and
print what was observed as one JSON object on stdout.

    sdk_driver.py (--ws-url URL | --ota-url URL) [--token T] [--device-id MAC]
                  (--wav FILE | --text "hello") [--timeout 30]
                  [--mode auto|realtime] [-v]

Exit code 0 when the turn looked right (see ``evaluate``), 1 otherwise.
``--wav sdk:NAME`` picks a WAV shipped inside the SDK (e.g. sdk:test_16k.wav).
Run it with the interpreter printed by scripts/python-env.sh.

What the SDK exposes, and therefore what this driver can see:
  * JSON messages other than ``hello`` and ``mcp`` reach the callback given to
    ``XiaoZhiWebsocket(message_handler_callback=...)``, in arrival order.
  * The server hello is consumed internally; only its effects are public
    (``hello_received``, ``session_id``, the decoder set up from
    ``audio_params``), so ``hello`` in the output is rebuilt from those.
  * Binary frames are decoded by the SDK's own decoder (``AudioOpus``, opuslib
    over the libopus bundled in the wheel) and appended to
    ``output_audio_queue`` as one PCM frame per packet (padded by the SDK to a
    whole uplink frame at the output rate). Packets the decoder rejects are
    only logged by the SDK; they are counted here from that log line.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
import threading
import time
import traceback
import wave
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

SDK_VERSION_EXPECTED = "0.5.1"
FRAME_MS = 60  # uplink frame duration, as the firmware and the SDK use
DEFAULT_MAC = "02:00:5a:49:00:01"  # locally administered, fixed for reproducibility


def eprint(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# SDK log capture: the SDK reports several failures only through its logger.
# --------------------------------------------------------------------------
class SdkLogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: List[str] = []
        self.decode_errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover - defensive
            msg = str(record.msg)
        if msg.startswith("opus_to_pcm error"):
            self.decode_errors += 1
        self.records.append(f"{record.levelname}: {msg}")


# --------------------------------------------------------------------------
# Observation of one turn
# --------------------------------------------------------------------------
class Observer:
    """Collects what the SDK delivers; decides when the turn is over."""

    def __init__(self, client_ref: Dict[str, Any], kind: str, text: Optional[str]) -> None:
        self.client_ref = client_ref
        self.kind = kind  # "wav" or "text"
        self.text = text
        self.messages: List[Dict[str, Any]] = []
        # timeline of ("msg", index) and ("audio", packets) entries, in order
        self.timeline: List[tuple] = []
        self.audio_packets_decoded = 0
        self.audio_samples = 0
        self.closed = False  # socket closed before the driver closed it
        self.closing = False
        self.tts_started = False
        self.done = asyncio.Event()

    def drain_audio(self) -> None:
        """Move decoded packets out of the SDK's queue, counting them."""
        client = self.client_ref.get("client")
        if client is None:
            return
        q = client.output_audio_queue
        n = 0
        while q:
            frame = q.popleft()
            n += 1
            try:
                self.audio_samples += int(getattr(frame, "size", len(frame)))
            except Exception:
                pass
        if n:
            self.audio_packets_decoded += n
            self.timeline.append(("audio", n))

    async def on_message(self, data: Dict[str, Any]) -> None:
        # Called by the SDK for every JSON message except hello/mcp, and with
        # synthetic {"type":"websocket","state":"close","source":"sdk...."}
        # when the socket closes. Must not raise: the SDK swallows errors.
        try:
            self.drain_audio()
            if data.get("type") == "websocket" and str(data.get("source", "")).startswith("sdk."):
                if not self.closing:
                    self.closed = True
                self.done.set()
                return
            self.messages.append(data)
            self.timeline.append(("msg", len(self.messages) - 1))
            if data.get("type") == "tts" and data.get("state") == "start":
                self.tts_started = True
            if self.turn_finished(data):
                self.done.set()
        except Exception as exc:  # pragma: no cover - defensive
            eprint(f"sdk_driver: callback error: {exc!r}")

    def turn_finished(self, last: Dict[str, Any]) -> bool:
        if self.evaluate()[0]:
            return True
        # The reply to our turn ended without meeting the criteria: stop
        # waiting instead of running into the timeout.
        if last.get("type") == "tts" and last.get("state") == "stop":
            if self.kind == "text":
                return any(m.get("type") == "tts" and m.get("state") == "sentence_start" for m in self.messages)
            return any(m.get("type") == "stt" for m in self.messages)
        return False

    def evaluate(self) -> tuple:
        """(ok, reason) from the observed timeline."""
        msgs = self.messages

        def is_tts(i: int, state: str) -> bool:
            m = msgs[i]
            return m.get("type") == "tts" and m.get("state") == state

        if self.kind == "text":
            phase = 0  # 0: want sentence_start == text, 1: want tts stop
            for kind, val in self.timeline:
                if kind != "msg":
                    continue
                if phase == 0 and is_tts(val, "sentence_start") and msgs[val].get("text") == self.text:
                    phase = 1
                elif phase == 1 and is_tts(val, "stop"):
                    return True, None
            if phase == 0:
                return False, "no tts sentence_start carrying the sent text"
            return False, "no tts stop after the sentence_start"

        # wav: stt -> tts start -> >=1 audio packet -> tts stop
        phase = 0
        audio = 0
        for kind, val in self.timeline:
            if kind == "audio":
                if phase == 2:
                    audio += val
                continue
            if phase == 0 and msgs[val].get("type") == "stt":
                phase = 1
            elif phase == 1 and is_tts(val, "start"):
                phase = 2
            elif phase == 2 and is_tts(val, "stop"):
                if audio >= 1:
                    return True, None
                return False, "tts stop arrived without any audio packet after tts start"
        return False, ["no stt", "no tts start after stt", "no tts stop after tts start"][phase]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def resolve_wav(arg: str) -> Path:
    if arg.startswith("sdk:"):
        from xiaozhi_sdk.utils import sdk_dir  # public module-level path of the package

        return Path(sdk_dir) / "file" / "audio" / arg[4:]
    return Path(arg)


def bypass_proxy_for(url: str) -> None:
    """websockets >= 15 honours *_proxy env vars (proxy=True by default) and
    the SDK does not override it; keep loopback traffic off any proxy."""
    host = urlparse(url).hostname or ""
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not loopback:
        return
    for var in ("no_proxy", "NO_PROXY"):
        cur = os.environ.get(var, "")
        items = [x for x in cur.split(",") if x]
        if host not in items:
            items.append(host)
        os.environ[var] = ",".join(items)


def close_info(client: Any) -> str:
    ws = getattr(client, "websocket", None)
    code = getattr(ws, "close_code", None) if ws is not None else None
    if code is None:
        return ""
    return f" (close code {code}, reason {getattr(ws, 'close_reason', '')!r})"


def rebuild_hello(client: Any) -> Optional[Dict[str, Any]]:
    """The SDK keeps no copy of the server hello; rebuild what it took from it."""
    if not client.hello_received.is_set():
        return None
    hello: Dict[str, Any] = {"type": "hello", "session_id": client.session_id}
    opus = client.audio_opus
    rate = getattr(opus, "xiaozhi_out_sample_rate", None)
    frame = getattr(opus, "xiaozhi_out_frame_size", None)
    if rate:
        params: Dict[str, Any] = {"sample_rate": int(rate)}
        if frame:
            params["frame_duration"] = int(frame) * 1000 // int(rate)
        hello["audio_params"] = params
    return hello


# --------------------------------------------------------------------------
# The turn
# --------------------------------------------------------------------------
async def run_turn(args: argparse.Namespace, result: Dict[str, Any], logcap: SdkLogCapture) -> None:
    import xiaozhi_sdk
    from xiaozhi_sdk import XiaoZhiWebsocket
    from xiaozhi_sdk.utils import read_audio_file

    result["sdk"]["version"] = getattr(xiaozhi_sdk, "__version__", None)
    if result["sdk"]["version"] != SDK_VERSION_EXPECTED:
        eprint(f"sdk_driver: warning: xiaozhi-sdk {result['sdk']['version']} != {SDK_VERSION_EXPECTED}")

    kind = "wav" if args.wav else "text"
    rate, channels = 16000, 1
    wav_path: Optional[Path] = None
    if kind == "wav":
        wav_path = resolve_wav(args.wav)
        with wave.open(str(wav_path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        if channels != 1 or width != 2:
            raise ValueError(f"{wav_path}: need 16-bit mono PCM, got {channels} ch x {8 * width} bit")
        result["sdk"]["wav"] = str(wav_path)

    client_ref: Dict[str, Any] = {}
    obs = Observer(client_ref, kind, args.text)
    client = XiaoZhiWebsocket(
        message_handler_callback=obs.on_message,
        url=args.ws_url,
        ota_url=args.ota_url,
        audio_sample_rate=rate,  # rate of the PCM we feed; the SDK resamples to 16 kHz
        audio_channels=1,
        audio_frame_duration=FRAME_MS,
    )
    client_ref["client"] = client
    client.mode = args.mode  # SDK default is "realtime"; it has no manual/listen-stop API
    result["sdk"]["mode"] = args.mode
    if args.token is not None:
        # No constructor/init argument exists for the token in ws-url mode; the
        # SDK sends "Authorization: Bearer <websocket_token>" (OTA overwrites it).
        client.websocket_token = args.token

    result["_obs"] = obs
    result["_client"] = client
    init = asyncio.ensure_future(client.init_connection(args.device_id))
    closed = asyncio.ensure_future(obs.done.wait())
    try:
        await asyncio.wait({init, closed}, return_when=asyncio.FIRST_COMPLETED)
        if not init.done():
            # The socket closed while the SDK still waits (up to 10 s) for a hello.
            init.cancel()
            raise RuntimeError("connection closed by the server before the hello exchange finished"
                               + close_info(client))
        connected = init.result()
    except KeyError as exc:
        raise RuntimeError(f"init_connection raised KeyError {exc} (OTA reply without websocket.token?)") from exc
    except asyncio.TimeoutError as exc:
        raise RuntimeError(
            "no usable server hello within 10 s (the SDK needs hello.audio_params with "
            "sample_rate/channels/frame_duration)"
        ) from exc
    finally:
        closed.cancel()
    result["hello"] = rebuild_hello(client)
    if not connected:
        raise RuntimeError("init_connection returned False (WebSocket connect failed; see sdk.log)")
    if client.hello_received.is_set() is False:
        raise RuntimeError("no server hello")
    if client.ota_task is not None:
        result["sdk"]["activation_loop"] = True
        raise RuntimeError("OTA reply carries 'activation': the SDK entered its activation loop")
    result["sdk"]["url"] = client.url
    # decoded PCM is delivered at this rate (the SDK resamples to it)
    result["sdk"]["audio_sample_rate"] = int(client.audio_opus.output_sample_rate)

    frame_s = FRAME_MS / 1000.0
    if kind == "text":
        if not await client.send_text(args.text):
            raise RuntimeError("send_text failed: connection closed")
        await obs.done.wait()
        return

    # --- voice turn: stream the WAV in real time, 60 ms per frame ---------
    frame_bytes = rate * FRAME_MS // 1000 * 2
    t0 = time.monotonic()
    sent = 0
    for pcm in read_audio_file(str(wav_path), rate, FRAME_MS):
        if len(pcm) < frame_bytes:  # the SDK would encode past the buffer end
            pcm = pcm + b"\x00" * (frame_bytes - len(pcm))
        if obs.done.is_set():
            break
        if not await client.send_audio(pcm):
            raise RuntimeError("send_audio failed: connection not open")
        sent += 1
        delay = t0 + sent * frame_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    result["sdk"]["wav_frames_sent"] = sent

    # --- then silence (like an open mic) until the server answers --------
    # auto: stop at tts start (the firmware stops the mic while speaking);
    # realtime: the mic keeps streaming until the turn is over.
    silence = b"\x00" * frame_bytes
    silent = 0
    while not obs.done.is_set():
        if args.mode == "auto" and obs.tts_started:
            break
        if not await client.send_audio(silence):
            break
        silent += 1
        delay = t0 + (sent + silent) * frame_s - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(obs.done.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
    result["sdk"]["silence_frames_sent"] = silent
    await obs.done.wait()


def finish(result: Dict[str, Any], logcap: SdkLogCapture) -> None:
    obs: Optional[Observer] = result.pop("_obs", None)
    result.pop("_client", None)
    close_extra = result.pop("_close_info", "")
    if obs is not None:
        obs.drain_audio()
        result["messages"] = obs.messages
        stt = [m.get("text") for m in obs.messages if m.get("type") == "stt"]
        result["stt"] = stt[0] if stt else None
        tts = [m for m in obs.messages if m.get("type") == "tts"]
        result["tts_states"] = [m.get("state") for m in tts]
        result["sentences"] = [m.get("text") for m in tts if m.get("state") == "sentence_start"]
        result["audio_packets"] = obs.audio_packets_decoded + logcap.decode_errors
        result["audio_decoded_samples"] = obs.audio_samples
        result["closed_early"] = obs.closed
        ok, reason = obs.evaluate()
        if obs.closed and not ok:
            reason = "connection closed by the server before the turn completed" + close_extra
    else:
        ok, reason = False, None
    result["sdk"]["audio_decode_errors"] = logcap.decode_errors
    if reason and reason.startswith("tts stop arrived without") and logcap.decode_errors:
        reason += f" ({logcap.decode_errors} packet(s) rejected by the SDK decoder: longer than the announced frame?)"
    result["sdk"]["log"] = logcap.records
    if result["hello"] is None:
        ok = False
        reason = reason or "no server hello"
    if result["error"] is None and not ok:
        result["error"] = reason or "turn incomplete"
    if result["error"] is not None:
        ok = False
    result["ok"] = bool(ok)


async def amain(args: argparse.Namespace, result: Dict[str, Any], logcap: SdkLogCapture) -> None:
    def on_loop_error(loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
        # e.g. the SDK's receive task ending with ConnectionClosedError that
        # nobody retrieves: keep it in the report instead of on stderr.
        exc = context.get("exception")
        logcap.records.append(f"LOOP: {context.get('message')}: {exc!r}" if exc else f"LOOP: {context.get('message')}")
        if args.verbose:
            loop.default_exception_handler(context)

    asyncio.get_running_loop().set_exception_handler(on_loop_error)
    try:
        await asyncio.wait_for(run_turn(args, result, logcap), timeout=args.timeout)
    except asyncio.TimeoutError:
        result["error"] = f"timeout after {args.timeout:g} s"
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
    finally:
        client = result.get("_client")
        if client is not None:
            if result.get("hello") is None:
                result["hello"] = rebuild_hello(client)
            obs = result.get("_obs")
            if obs is not None:
                obs.drain_audio()
                if obs.closed:
                    result["_close_info"] = close_info(client)
                obs.closing = True
            try:
                await asyncio.wait_for(client.close(), timeout=3)
            except BaseException as exc:  # close must never keep us here
                if args.verbose:
                    eprint(f"sdk_driver: close: {exc!r}")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Drive one xiaozhi turn through xiaozhi-sdk 0.5.1 and report JSON.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--ws-url", help="WebSocket URL, e.g. ws://127.0.0.1:8000/xiaozhi/v1/")
    target.add_argument("--ota-url", help="OTA URL, e.g. http://127.0.0.1:8000/xiaozhi/ota/ (SDK POSTs it)")
    p.add_argument("--token", default=None, help="bearer token (ws-url mode; with --ota-url the OTA reply's token wins)")
    p.add_argument("--device-id", default=DEFAULT_MAC, help=f"device MAC, XX:XX:XX:XX:XX:XX (default {DEFAULT_MAC})")
    turn = p.add_mutually_exclusive_group(required=True)
    turn.add_argument("--wav", help="16-bit mono WAV to speak; 'sdk:NAME' = a WAV shipped in the SDK")
    turn.add_argument("--text", help="text turn: sent as listen detect")
    p.add_argument("--timeout", type=float, default=30.0, help="overall deadline in seconds (default 30)")
    p.add_argument("--mode", choices=["auto", "realtime"], default="auto", help="listen mode (default auto)")
    p.add_argument("-v", "--verbose", action="store_true", help="SDK debug log on stderr")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.timeout <= 0:
        args.timeout = 30.0

    # Hard watchdog: whatever happens, never outlive the deadline by much.
    def _watchdog() -> None:
        sys.stdout.write(json.dumps({"ok": False, "hello": None, "messages": [], "stt": None, "tts_states": [],
                                     "sentences": [], "audio_packets": 0, "audio_decoded_samples": 0,
                                     "error": "watchdog: driver hung past its timeout"}) + "\n")
        sys.stdout.flush()
        os._exit(1)

    wd = threading.Timer(args.timeout + 10.0, _watchdog)
    wd.daemon = True
    wd.start()

    logcap = SdkLogCapture()
    sdk_logger = logging.getLogger("xiaozhi_sdk")
    sdk_logger.addHandler(logcap)
    sdk_logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if args.verbose:
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
    else:
        sdk_logger.propagate = False  # keep stderr quiet; records are in the JSON

    bypass_proxy_for(args.ws_url or args.ota_url)

    result: Dict[str, Any] = {
        "ok": False,
        "hello": None,
        "messages": [],
        "stt": None,
        "tts_states": [],
        "sentences": [],
        "audio_packets": 0,
        "audio_decoded_samples": 0,
        "error": None,
        "sdk": {
            "decoder": "xiaozhi_sdk.opus.AudioOpus (opuslib + bundled libopus) via the SDK receive path",
            "hello_source": "rebuilt from SDK state (session_id, decoder params); the SDK does not expose the raw hello",
        },
    }
    try:
        asyncio.run(amain(args, result, logcap))
    except BaseException as exc:  # e.g. import failure of the SDK
        if result["error"] is None:
            result["error"] = f"{type(exc).__name__}: {exc}"
    finish(result, logcap)
    wd.cancel()
    sys.stdout.write(json.dumps(result, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
