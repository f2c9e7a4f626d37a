"""The server's page: one self-contained HTML document (no build step, no external
script, style or font), that classifies dropped or picked images through the classify
endpoint and draws the top classes as bars, shows the index's nearest images when the
server has one, shows the model card, and reads live latency and batch sizes from
/metrics every two seconds."""

from __future__ import annotations

import html

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cnnspec serve: %(title)s</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:12px 24px}header h1{font-size:18px;margin:0}
main{display:grid;grid-template-columns:minmax(0,2fr) minmax(0,1fr);gap:20px;padding:20px 24px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:16px}
#drop{border:2px dashed #8a94a6;border-radius:8px;padding:28px;text-align:center;cursor:pointer}
#drop.over{background:#eef3ff;border-color:#3560d0}
.result{display:flex;gap:14px;margin-top:14px;align-items:flex-start}.result img{width:96px;height:96px;object-fit:contain;background:#eee}
.bar{display:flex;align-items:center;gap:8px;margin:3px 0}.bar span{width:130px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar div{height:14px;background:#3560d0;border-radius:3px}.error{color:#b00020}
.near{display:flex;gap:8px;flex-wrap:wrap;margin-top:6px}.near figure{margin:0;width:84px;font-size:12px}
.near img{width:84px;height:84px;object-fit:cover;background:#eee}
dt{font-weight:600;margin-top:6px}dd{margin:0;word-break:break-all}input[type=password]{width:100%%}
</style></head><body>
<header><h1>cnnspec serve &middot; <span id="name">%(title)s</span></h1></header>
<main><section><div id="drop" tabindex="0">Drop images here, or click to pick them
<input id="files" type="file" accept="image/*" multiple hidden></div><div id="results"></div></section>
<section><h2>Model</h2><dl id="card"></dl><h2>Live</h2><dl id="live"><dt>waiting for /metrics</dt></dl>
<label>Token (if the server asks for one)<input id="token" type="password" autocomplete="off"></label></section></main>
<script>
"use strict";
const model = %(model)s;
let hasIndex = false;
const base = "/v2/models/" + encodeURIComponent(model);
const headers = () => { const t = document.getElementById("token").value; return t ? {Authorization: "Bearer " + t} : {}; };
const el = (tag, attrs, text) => { const e = document.createElement(tag); Object.assign(e, attrs || {}); if (text !== undefined) e.textContent = text; return e; };
async function card() {
  const r = await fetch(base + "/card", {headers: headers()}); if (!r.ok) return;
  const c = await r.json(), dl = document.getElementById("card"); dl.replaceChildren();
  hasIndex = !!c.index;
  for (const [k, v] of [["spec", c.spec], ["input", c.input.join(" x ")], ["classes", c.classes.length + ": " + c.classes.slice(0, 10).join(", ")],
                        ["parameters", c.params.toLocaleString()], ["MACs", c.macs.toLocaleString()], ["checkpoint", c.checkpoint], ["engine", c.engine],
                        ...(c.index ? [["index", c.index.images.toLocaleString() + " images, layer " + c.index.layer + ", " + c.index.metric]] : [])]) {
    dl.append(el("dt", {}, k), el("dd", {}, String(v)));
  }
}
async function classify(files) {
  const out = document.getElementById("results"), form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  const r = await fetch(base + "/classify?top_k=5", {method: "POST", body: form, headers: headers()});
  const answer = await r.json();
  if (!r.ok) { out.prepend(el("p", {className: "error"}, answer.error)); return; }
  let near = null;
  if (hasIndex) {
    const form2 = new FormData(); for (const f of files) form2.append("files", f, f.name);
    const s = await fetch(base + "/similar?k=6", {method: "POST", body: form2, headers: headers()});
    if (s.ok) near = (await s.json()).results;
  }
  answer.results.forEach((res, i) => {
    const box = el("div", {className: "result"}), bars = el("div");
    box.append(el("img", {src: URL.createObjectURL(files[i]), alt: res.input}), bars);
    bars.append(el("strong", {}, res.input));
    for (const t of res.top) {
      const row = el("div", {className: "bar"}), fill = el("div");
      fill.style.width = Math.max(2, Math.round(t.probability * 200)) + "px";
      row.append(el("span", {title: t.class}, t.class), fill, el("small", {}, t.probability.toFixed(3)));
      bars.append(row);
    }
    if (near) {
      const strip = el("div", {className: "near"});
      for (const n of near[i].neighbours) {
        const fig = el("figure"), img = el("img", {alt: n.path, title: n.path});
        fetch(base + "/similar/" + n.row, {headers: headers()}).then(r => r.ok ? r.blob() : null).then(b => { if (b) img.src = URL.createObjectURL(b); });
        fig.append(img, el("figcaption", {}, n.class + " " + (n.similarity ?? n.distance).toFixed(3)));
        strip.append(fig);
      }
      bars.append(el("div", {}, "nearest in the index:"), strip);
    }
    out.prepend(box);
  });
}
function quantile(buckets, q) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0; if (!total) return null;
  for (const [le, n] of buckets) if (n >= q * total) return le; return null;
}
async function live() {
  const r = await fetch("/metrics", {headers: headers()}); if (!r.ok) return;
  const text = await r.text(), dl = document.getElementById("live"), lat = [], rows = [];
  let images = 0, queue = 0;
  for (const line of text.split("\\n")) {
    let m = line.match(/^cnnspec_request_duration_seconds_bucket\\{.*endpoint="(infer|classify)",le="([^"]+)"\\} (\\d+)/);
    if (m) { const le = m[2] === "+Inf" ? Infinity : +m[2], at = lat.findIndex(b => b[0] === le);
             if (at < 0) lat.push([le, +m[3]]); else lat[at][1] += +m[3]; continue; }
    m = line.match(/^cnnspec_batch_rows_bucket\\{.*le="([^"]+)"\\} (\\d+)/); if (m) { rows.push([m[1] === "+Inf" ? Infinity : +m[1], +m[2]]); continue; }
    m = line.match(/^cnnspec_images_total\\{.*\\} (\\d+)/); if (m) images = +m[1];
    m = line.match(/^cnnspec_queue_rows\\{.*\\} (\\d+)/); if (m) queue = +m[1];
  }
  lat.sort((a, b) => a[0] - b[0]);
  const ms = v => v === null ? "-" : v === Infinity ? "> 10 s" : "<= " + (v * 1000) + " ms";
  dl.replaceChildren(el("dt", {}, "latency p50 / p99"), el("dd", {}, ms(quantile(lat, 0.5)) + " / " + ms(quantile(lat, 0.99))),
                     el("dt", {}, "batch rows p50 / max bucket"), el("dd", {}, (quantile(rows, 0.5) ?? "-") + " / " + (quantile(rows, 1) ?? "-")),
                     el("dt", {}, "images served"), el("dd", {}, String(images)), el("dt", {}, "queue"), el("dd", {}, String(queue)));
}
const drop = document.getElementById("drop"), picker = document.getElementById("files");
drop.onclick = () => picker.click();
picker.onchange = () => { if (picker.files.length) classify([...picker.files]); };
drop.ondragover = e => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = e => { e.preventDefault(); drop.classList.remove("over"); classify([...e.dataTransfer.files]); };
document.getElementById("token").onchange = card;
card(); live(); setInterval(live, 2000);
</script></body></html>
"""


def page(model: str) -> str:
    import json

    return _PAGE % {"title": html.escape(model), "model": json.dumps(model).replace("<", "\\u003c")}
