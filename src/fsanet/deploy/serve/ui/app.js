// fsanet's live page: a photo to POST /v1/pose, or the camera over WS /v1/stream, with each
// face's box and 3D axes drawn as `fsanet predict` draws them (docs/CONVENTIONS.md).
// No dependencies, no build step. The API key stays in this tab (sessionStorage), never in
// a URL: it goes in the Authorization header and in the stream's first message.
"use strict";

(() => {
  const KEY_STORE = "fsanet.apiKey";
  const MAX_WIDTH = 640; // camera frames are downscaled to at most this width before sending
  const JPEG_QUALITY = 0.85;
  const ANSWER_TIMEOUT_MS = 10000; // a frame still unanswered then: stop waiting, send anew
  const STATS_WINDOW_MS = 2000; // frames/s over the last 2 s
  const RETRY_MS = 1000; // after a frame refused with 429 or 503
  const AXIS_COLOURS = ["rgb(255,0,0)", "rgb(0,255,0)", "rgb(0,0,255)"]; // x, y, nose
  const $ = (id) => document.getElementById(id);

  // What the page did, for the tests (and the curious, from the console): `drawn` is the
  // answer drawn on the live canvas, `photo` the last photo answer; `log` keeps every frame
  // sent and every answer only after `fsanet.record()`.
  const state = {
    recording: false,
    log: { sent: [], answers: [], errors: [] },
    drawn: null,
    photo: null,
    closed: null,
    live: false,
  };
  window.fsanet = {
    state,
    record(on = true) {
      state.recording = on;
      state.log = { sent: [], answers: [], errors: [] };
    },
    sentBase64: () => state.log.sent.map(toBase64),
    imageAxes,
  };

  // ---- geometry: the same matrix and drawing as fsanet.faces.vision (rotation.py, draw.py)

  function rot(axis, a) {
    const c = Math.cos(a), s = Math.sin(a);
    if (axis === "x") return [[1, 0, 0], [0, c, -s], [0, s, c]];
    if (axis === "y") return [[c, 0, s], [0, 1, 0], [-s, 0, c]];
    return [[c, -s, 0], [s, c, 0], [0, 0, 1]];
  }

  function mul(a, b) {
    return a.map((row) => [0, 1, 2].map((j) => row[0] * b[0][j] + row[1] * b[1][j] + row[2] * b[2][j]));
  }

  // R = Rx(-pitch) Ry(yaw) Rz(roll): head-to-camera, OpenCV's axes (x right, y down).
  function rotationMatrix(yaw, pitch, roll) {
    const rad = Math.PI / 180;
    return mul(mul(rot("x", -pitch * rad), rot("y", yaw * rad)), rot("z", roll * rad));
  }

  // The drawn axes as image directions: x (red) R[:2,0], y (green) R[:2,1], nose (blue) -R[:2,2].
  function imageAxes(yaw, pitch, roll) {
    const m = rotationMatrix(yaw, pitch, roll);
    return [[m[0][0], m[1][0]], [m[0][1], m[1][1]], [-m[0][2], -m[1][2]]];
  }

  // Python's round(): halves to even, and never "-0".
  function roundEven(v) {
    const r = Math.round(v);
    return (Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r) + 0;
  }

  const degrees = (a) => {
    const r = roundEven(a);
    return (r >= 0 ? "+" : "") + r;
  };

  // Box, axes from the box centre (half the box size long) and a label, as draw_face does;
  // `scale` maps the answer's pixels to the canvas's.
  function drawFace(ctx, face, scale) {
    const [x, y, w, h] = face.box.map((v) => v * scale);
    const t = Math.max(1, Math.round(Math.max(ctx.canvas.width, ctx.canvas.height) / 400));
    ctx.lineWidth = t;
    ctx.strokeStyle = "rgb(255,255,255)";
    ctx.strokeRect(x, y, w, h);
    const cx = x + w / 2, cy = y + h / 2, size = Math.max(w, h) / 2;
    ctx.lineWidth = t + 1;
    ctx.lineCap = "round";
    imageAxes(face.yaw, face.pitch, face.roll).forEach(([dx, dy], i) => {
      ctx.strokeStyle = AXIS_COLOURS[i];
      ctx.beginPath();
      ctx.moveTo(cx, cy);
      ctx.lineTo(cx + size * dx, cy + size * dy);
      ctx.stroke();
    });
    let label = `y${degrees(face.yaw)} p${degrees(face.pitch)} r${degrees(face.roll)}`;
    if (face.track !== undefined && face.track !== null) label = `#${face.track} ${label}`;
    if (face.score !== undefined) label += ` ${face.score.toFixed(2)}`;
    const px = Math.round(9 * t);
    ctx.font = `${px}px sans-serif`;
    const tw = ctx.measureText(label).width;
    const x0 = Math.max(Math.round(x), 0), y0 = Math.max(Math.round(y) - px - 4 * t, 0);
    ctx.fillStyle = "rgb(0,0,0)";
    ctx.fillRect(x0, y0, tw + 4 * t, px + 4 * t);
    ctx.fillStyle = "rgb(255,255,255)";
    ctx.textBaseline = "top";
    ctx.fillText(label, x0 + 2 * t, y0 + 2 * t);
  }

  // ---- status line, key, tabs

  function setStatus(text, error = false) {
    const el = $("status");
    el.textContent = text;
    el.className = text ? (error ? "error" : "info") : "";
  }

  function apiKey() {
    return $("key").value.trim();
  }

  function keyRefused(where) {
    setStatus(`API key refused (${where}): type this server's key above and try again.`, true);
    $("key").setAttribute("aria-invalid", "true");
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { authorization: `Bearer ${key}` } : {};
  }

  function showTab(name) {
    for (const tab of ["camera", "photo"]) {
      $(tab).hidden = tab !== name;
      $(`tab-${tab}`).classList.toggle("active", tab === name);
    }
  }

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }

  const fixed = (v, digits = 2) => (typeof v === "number" ? v.toFixed(digits) : "");

  function fillTable(table, faces, first) {
    const body = table.tBodies[0];
    body.replaceChildren();
    faces.forEach((face, i) => {
      const row = body.insertRow();
      cell(row, first(face, i));
      cell(row, fixed(face.yaw));
      cell(row, fixed(face.pitch));
      cell(row, fixed(face.roll));
      cell(row, fixed(face.score));
      if (table.id === "photo-faces") cell(row, face.box.map((v) => v.toFixed(0)).join(", "));
    });
  }

  // ---- photo: POST /v1/pose

  async function posePhoto(file) {
    if (file.type !== "image/jpeg" && file.type !== "image/png") {
      setStatus(`${file.name}: not a JPEG or PNG photo (${file.type || "unknown type"})`, true);
      return;
    }
    setStatus(`posing ${file.name}…`);
    let response, answer;
    try {
      response = await fetch("/v1/pose", {
        method: "POST",
        headers: { "content-type": file.type, ...authHeaders() },
        body: file,
      });
      answer = await response.json();
    } catch (e) {
      setStatus(`${file.name}: no answer from the server (${e.message})`, true);
      return;
    }
    if (response.status === 401) return keyRefused("the photo route answered 401");
    if (!response.ok) {
      setStatus(`${file.name}: ${answer.error || "HTTP " + response.status}`, true);
      return;
    }
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch (e) {
      setStatus(`${file.name}: the browser cannot show this image (${e.message})`, true);
      return;
    }
    const canvas = $("photo-canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    for (const face of answer.faces) drawFace(ctx, face, canvas.width / answer.width);
    fillTable($("photo-faces"), answer.faces, (_, i) => String(i + 1));
    $("photo-json").textContent = JSON.stringify(answer, null, 2);
    state.photo = answer;
    const more = answer.truncated ? ` (of ${answer.total} found)` : "";
    setStatus(`${file.name}: ${answer.count} face${answer.count === 1 ? "" : "s"}${more}`);
  }

  // ---- camera: WS /v1/stream, one frame in flight

  let live = null;

  function streamUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const options = streamOptions();
    const query = new URLSearchParams({ smooth: options.smooth ? "1" : "0" });
    if (options.detect_every) query.set("detect_every", options.detect_every);
    return `${scheme}//${location.host}/v1/stream?${query}`;
  }

  // Smoothing on or off; detect every K-th frame (left empty: the server's --detect-every).
  function streamOptions() {
    const field = $("detect-every");
    const options = { smooth: $("smooth").checked };
    if (field.value.trim() !== "") {
      options.detect_every = Math.max(1, Math.min(30, parseInt(field.value, 10) || 1));
      field.value = options.detect_every;
    }
    return options;
  }

  async function startCamera() {
    if (live) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus("the camera needs a secure page: https://, or http://127.0.0.1 / localhost", true);
      return;
    }
    $("start").disabled = true;
    setStatus("starting the camera…");
    let media;
    try {
      media = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: MAX_WIDTH } }, audio: false });
    } catch (e) {
      setStatus(`camera: ${e.name}: ${e.message}`, true);
      $("start").disabled = false;
      return;
    }
    const video = document.createElement("video");
    video.muted = true;
    video.playsInline = true;
    video.srcObject = media;
    const s = {
      media, video, ws: null, sent: 0, inFlight: null, newFrame: false, stopped: false,
      latest: null, answerTimes: [], rtts: [], skipped: 0, errors: 0, raf: 0, timer: 0, pausedUntil: 0,
      grab: document.createElement("canvas"),
    };
    live = s;
    state.live = true;
    $("stop").disabled = false;
    await video.play().catch(() => {});
    if (s.stopped) return;
    if (video.requestVideoFrameCallback) {
      const onFrame = () => {
        if (s.stopped) return;
        s.newFrame = true;
        pump(s);
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    }
    s.timer = setInterval(() => {
      if (!video.requestVideoFrameCallback) s.newFrame = true;
      if (s.inFlight && performance.now() - s.inFlight.at > ANSWER_TIMEOUT_MS) {
        setStatus(`no answer for frame ${s.inFlight.frame} within ${ANSWER_TIMEOUT_MS / 1000} s`, true);
        s.inFlight = null;
      }
      pump(s);
    }, 33);
    openStream(s);
    s.raf = requestAnimationFrame(() => drawLive(s));
  }

  function openStream(s) {
    const ws = new WebSocket(streamUrl());
    ws.binaryType = "arraybuffer";
    s.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      const key = apiKey();
      if (key) ws.send(JSON.stringify({ type: "auth", key }));
      setStatus("streaming");
      pump(s);
    };
    ws.onmessage = (event) => onAnswer(s, event.data);
    ws.onclose = (event) => {
      state.closed = { code: event.code, reason: event.reason, opened };
      if (s.stopped) return;
      if (event.code === 4401) keyRefused(`the stream was closed: ${event.reason || "invalid API key"}`);
      else if (event.code === 1013) setStatus(`the server is full (${event.reason || "too many streams"}): try again later`, true);
      else if (!opened) setStatus("the stream could not be opened (refused at the handshake: another origin, a full server, or no server)", true);
      else setStatus(`the stream closed (code ${event.code}${event.reason ? ": " + event.reason : ""})`, true);
      stopCamera(false);
    };
  }

  function pump(s) {
    const v = s.video;
    if (s.stopped || s.inFlight || !s.newFrame || !s.ws || s.ws.readyState !== WebSocket.OPEN) return;
    if (performance.now() < s.pausedUntil) return; // the server asked to slow down
    if (v.readyState < 2 || !v.videoWidth) return;
    const scale = Math.min(1, MAX_WIDTH / v.videoWidth);
    s.grab.width = Math.round(v.videoWidth * scale);
    s.grab.height = Math.round(v.videoHeight * scale);
    s.grab.getContext("2d").drawImage(v, 0, 0, s.grab.width, s.grab.height);
    s.newFrame = false;
    s.inFlight = { frame: -1, at: performance.now() }; // held while the JPEG is encoded
    s.grab.toBlob(async (blob) => {
      const buffer = blob ? await blob.arrayBuffer() : null;
      if (s.stopped || !buffer || s.ws.readyState !== WebSocket.OPEN) {
        s.inFlight = null;
        return;
      }
      s.inFlight = { frame: s.sent, at: performance.now() };
      s.sent += 1;
      s.ws.send(buffer);
      if (state.recording) state.log.sent.push(new Uint8Array(buffer));
    }, "image/jpeg", JPEG_QUALITY);
  }

  function onAnswer(s, data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    const now = performance.now();
    if (s.inFlight && msg.frame === s.inFlight.frame) {
      s.rtts.push(now - s.inFlight.at);
      if (s.rtts.length > 60) s.rtts.shift();
      s.inFlight = null;
    }
    if (msg.type === "frame") {
      s.latest = msg;
      s.skipped += msg.skipped || 0;
      s.answerTimes.push(now);
      while (s.answerTimes[0] < now - STATS_WINDOW_MS) s.answerTimes.shift();
      if (state.recording) state.log.answers.push(msg);
      fillTable($("live-faces"), msg.faces, (face) => (face.track ?? ""));
      showStats(s, msg);
    } else if (msg.type === "error") {
      s.errors += 1;
      if (state.recording) state.log.errors.push(msg);
      setStatus(`frame ${msg.frame}: ${msg.error} (${msg.status})`, true);
      // Rate-limited or busy: wait a second before the next frame instead of hammering.
      if (msg.status === 429 || msg.status === 503) s.pausedUntil = now + RETRY_MS;
    }
    pump(s);
  }

  function median(values) {
    const sorted = [...values].sort((a, b) => a - b);
    return sorted.length ? sorted[Math.floor(sorted.length / 2)] : NaN;
  }

  function showStats(s, msg) {
    const span = Math.max(1, s.answerTimes[s.answerTimes.length - 1] - s.answerTimes[0]);
    const fps = s.answerTimes.length > 1 ? ((s.answerTimes.length - 1) * 1000) / span : 0;
    const faces = msg.faces.length;
    $("live-stats").textContent =
      `${fps.toFixed(1)} frames/s · round trip ${median(s.rtts).toFixed(0)} ms ` +
      `(server ${fixed(msg.server_ms, 1)} ms) · ${faces} face${faces === 1 ? "" : "s"} · ` +
      `${msg.width}×${msg.height} · frame ${msg.frame} · skipped ${s.skipped}` +
      (s.errors ? ` · errors ${s.errors}` : "");
  }

  // At display rate: the newest camera frame with the newest answer's faces over it.
  function drawLive(s) {
    if (s.stopped) return;
    const v = s.video, canvas = $("live");
    if (v.videoWidth) {
      if (canvas.width !== v.videoWidth || canvas.height !== v.videoHeight) {
        canvas.width = v.videoWidth;
        canvas.height = v.videoHeight;
      }
      const ctx = canvas.getContext("2d");
      ctx.drawImage(v, 0, 0);
      const answer = s.latest;
      if (answer) {
        const scale = canvas.width / answer.width;
        for (const face of answer.faces) drawFace(ctx, face, scale);
        state.drawn = { frame: answer.frame, faces: answer.faces, scale, width: canvas.width, height: canvas.height };
      }
    }
    s.raf = requestAnimationFrame(() => drawLive(s));
  }

  function stopCamera(byUser = true) {
    const s = live;
    if (!s) return;
    live = null;
    s.stopped = true;
    state.live = false;
    cancelAnimationFrame(s.raf);
    clearInterval(s.timer);
    if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close(1000, "camera stopped");
    for (const track of s.media.getTracks()) track.stop();
    $("start").disabled = false;
    $("stop").disabled = true;
    if (byUser) setStatus("camera off");
  }

  function sendOptions() {
    if (live && live.ws && live.ws.readyState === WebSocket.OPEN) {
      live.ws.send(JSON.stringify({ type: "options", ...streamOptions() }));
    }
  }

  function toBase64(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  // ---- wiring

  async function showServer() {
    try {
      const ready = await (await fetch("/readyz")).json();
      if (!ready.model) throw new Error(ready.error || "not ready");
      $("model").textContent = `model ${ready.model}`;
      if (!ready.faces) {
        setStatus("this server runs without the face detector (--no-faces): photos and the camera need it", true);
      }
    } catch (e) {
      $("model").textContent = `server not ready (${e.message})`;
    }
  }

  function init() {
    const key = $("key");
    key.value = sessionStorage.getItem(KEY_STORE) || "";
    $("key-form").addEventListener("submit", (e) => e.preventDefault()); // Enter: nothing to send
    key.addEventListener("input", () => {
      sessionStorage.setItem(KEY_STORE, key.value);
      key.removeAttribute("aria-invalid");
      if ($("status").className === "error") setStatus("");
    });
    $("tab-camera").addEventListener("click", () => showTab("camera"));
    $("tab-photo").addEventListener("click", () => showTab("photo"));
    $("start").addEventListener("click", startCamera);
    $("stop").addEventListener("click", () => stopCamera(true));
    $("smooth").addEventListener("change", sendOptions);
    $("detect-every").addEventListener("change", sendOptions);
    $("file").addEventListener("change", (e) => e.target.files[0] && posePhoto(e.target.files[0]));
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const file = e.dataTransfer.files[0];
      if (file) posePhoto(file);
    });
    showServer();
  }

  init();
})();
