// conveyor dashboard: glue between the server's data and uPlot. No charting code of
// its own: lanes and depths arrive downsampled from the server; text goes in with
// textContent only, never as HTML.
"use strict";

(function () {
  const PALETTE = ["#3b6ea5", "#c9672d", "#4a9a5b", "#a4448f", "#8a7b2b", "#2b8a8a", "#b03a3a", "#5b5bb8"];
  const colour = (i) => PALETTE[i % PALETTE.length];
  const pageData = () => {
    const el = document.getElementById("page-data");
    return el ? JSON.parse(el.textContent) : {};
  };
  const secs = (u, splits) => splits.map((v) => (v == null ? "" : Number(v.toPrecision(3)) + " s"));
  const widthOf = (el) => Math.max(300, Math.floor(el.getBoundingClientRect().width || 900));

  function cell(tr, text, numeric) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "n";
    tr.appendChild(td);
    return td;
  }

  // --- a run: its timeline -------------------------------------------------------
  async function drawTimeline(data) {
    const lanesEl = document.getElementById("lanes");
    if (!lanesEl || !data.recording) return;
    const t0 = performance.now();
    const resp = await fetch(`/api/runs/${encodeURIComponent(data.run)}/timeline?width=${widthOf(lanesEl)}`);
    if (!resp.ok) { lanesEl.textContent = "no timeline: " + resp.status; return; }
    const tl = await resp.json();
    const stages = [...new Set(tl.lanes.map((l) => l.stage))];
    const n = tl.lanes.length;
    const names = tl.lanes.map((l) =>
      l.node ? `${l.stage} · ${l.node} · actor ${l.worker}` : `${l.stage} · worker ${l.worker}`);
    const laneSeries = tl.lanes.map((l, i) => {
      const base = n - 1 - i;
      return {
        label: names[i],
        stroke: colour(stages.indexOf(l.stage)),
        fill: colour(stages.indexOf(l.stage)) + "bb",
        fillTo: base,
        width: 0,
        points: { show: false },
        paths: uPlot.paths.stepped({ align: 1 }),
        value: (u, v) => (v == null ? "-" : `${Math.round((v - base) / 0.8 * 100)}% busy`),
      };
    });
    const laneData = [tl.x, ...tl.lanes.map((l, i) => l.busy.map((b) => n - 1 - i + b * 0.8))];
    const x = { time: false, range: [0, tl.seconds] };
    const sync = { key: "timeline-" + data.run };
    new uPlot({
      width: widthOf(lanesEl),
      height: Math.min(900, Math.max(160, 32 * n + 80)),
      scales: { x, y: { range: [0, Math.max(1, n)] } },
      cursor: { sync },
      legend: { show: n <= 16 },
      axes: [
        { label: "time since the run started", values: secs },
        { size: 170, splits: () => names.map((_, i) => n - 1 - i + 0.4), values: (u, splits) => splits.map((s) => names[n - 1 - Math.round(s - 0.4)] || "") },
      ],
      series: [{ label: "s" }, ...laneSeries],
    }, laneData, lanesEl);
    lanesEl.dataset.lanes = String(n);

    const depthEl = document.getElementById("depths");
    const dep = tl.depth;
    new uPlot({
      width: widthOf(depthEl),
      height: 220,
      scales: { x },
      cursor: { sync },
      axes: [{ label: "time since the run started", values: secs }, { label: "queued items (mean)" }],
      series: [{ label: "s" }, ...dep.stages.map((s, i) => ({
        label: `${s.stage} queue`, stroke: colour(i), width: 1.5,
        paths: uPlot.paths.stepped({ align: 1 }), points: { show: false },
      }))],
    }, [dep.x, ...dep.stages.map((s) => s.mean)], depthEl);

    const gpuEl = document.getElementById("gpus");
    (gpuEl ? tl.gpus : []).forEach((g, i) => {  // a chart per sampled GPU: its utilisation
      const el = gpuEl.appendChild(document.createElement("div"));
      const gpu = g.node ? `GPU ${g.device} on ${g.node}` : `GPU ${g.device}`;
      el.className = "chart";
      new uPlot({
        width: widthOf(depthEl),
        height: 160,
        scales: { x, y: { range: [0, 100] } },
        cursor: { sync },
        axes: [{ label: "time since the run started", values: secs }, { label: `${gpu} busy %` }],
        series: [{ label: "s" }, {
          label: `${gpu} (${g.stages.join(", ")})`, stroke: colour(i), width: 1.5,
          points: { show: false }, value: (u, v) => (v == null ? "-" : `${v}%`),
        }],
      }, [g.x, g.utilisation], el);
    });

    const caption = document.getElementById("timeline-caption");
    const detail = tl.detail_units < tl.units
      ? `the lanes cover the first ${tl.detail_units} of ${tl.units} units (the recording's detail window); the queue depths cover the whole run`
      : `${tl.units} units, one lane per worker, downsampled to ${tl.x.length} buckets on the server`;
    caption.textContent = detail;
    document.body.dataset.timelineMs = String(Math.round(performance.now() - t0));
    document.body.dataset.timelineAt = String(Math.round(performance.now()));  // since navigation
    document.body.dataset.timelineDrawn = "1";
  }

  // --- a live run: server-sent events --------------------------------------------
  function watchLive(data) {
    const tbody = document.querySelector("#live-stages tbody");
    const rows = new Map();
    let rates = null, depths = null, prev = null;
    const xs = [], rateCols = [], depthCols = [];
    const source = new EventSource(`/runs/${encodeURIComponent(data.run)}/events`);
    document.body.dataset.updates = "0";
    // A run writes a snapshot every second while it goes on, even when idle: silence
    // means its process has ended without saying so (or it records no snapshots).
    let lastNews = Date.now();
    const note = document.getElementById("live-note");
    const silence = setInterval(() => {
      const quiet = (Date.now() - lastNews) / 1000;
      note.textContent = quiet > 5
        ? `no snapshot for ${Math.round(quiet)} s: the run's process may have ended without recording its end, or the run records no snapshots (a SnapshotRecorder writes them)`
        : "";
    }, 1000);
    source.addEventListener("snapshot", (ev) => {
      const s = JSON.parse(ev.data);
      lastNews = Date.now();
      const dt = prev ? s.t - prev.t : 0;
      const before = prev ? new Map(prev.stages.map((st) => [st.name, st])) : new Map();
      s.stages.forEach((st, i) => {
        let tr = rows.get(st.name);
        if (!tr) {
          tr = document.createElement("tr");
          tr.dataset.stage = st.name;
          cell(tr, st.name, false);
          for (let k = 0; k < 7; k++) cell(tr, "", true);
          tbody.appendChild(tr);
          rows.set(st.name, tr);
          rateCols.push([]); depthCols.push([]);
        }
        const b = before.get(st.name);
        const rate = b && dt > 0 ? (st.out - b.out) / dt : null;
        const tds = tr.children;
        tds[1].textContent = st.in; tds[2].textContent = st.out;
        tds[3].textContent = rate == null ? "-" : rate.toFixed(1);
        tds[4].textContent = `${st.depth} / ${st.bound == null ? "∞" : st.bound}`;
        tds[5].textContent = `${st.busy} / ${st.workers}`;
        tds[6].textContent = st.errors; tds[7].textContent = st.dead;
        rateCols[i].push(rate); depthCols[i].push(st.depth);
      });
      xs.push(s.t);
      document.getElementById("live-elapsed").textContent = s.t.toFixed(1);
      document.getElementById("live-read").textContent = s.read;
      document.getElementById("live-emitted").textContent = s.emitted;
      const names = s.stages.map((st) => st.name);
      if (!rates) {
        const el = document.getElementById("live-rates"), el2 = document.getElementById("live-depths");
        const mk = (el, label, unit) => new uPlot({
          width: widthOf(el), height: 200, scales: { x: { time: false } },
          axes: [{ label: "time since the run started", values: secs }, { label: unit }],
          series: [{ label: "s" }, ...names.map((nm, i) => ({ label: `${nm} ${label}`, stroke: colour(i), width: 1.5, points: { show: false } }))],
        }, [[], ...names.map(() => [])], el);
        rates = mk(el, "out/s", "results per second");
        depths = mk(el2, "queue", "queued items");
      }
      rates.setData([xs, ...rateCols]);
      depths.setData([xs, ...depthCols]);
      prev = s;
      document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
      document.body.dataset.emitted = String(s.emitted);
    });
    source.addEventListener("end", (ev) => {
      const state = JSON.parse(ev.data).state;
      const badge = document.getElementById("live-state");
      badge.textContent = state;
      badge.className = "badge " + state;
      document.body.dataset.ended = state;
      clearInterval(silence);
      note.textContent = "";
      source.close();
    });
  }

  // --- a pipeline over time ------------------------------------------------------
  function drawPipeline(data) {
    const pts = data.points.filter((p) => p.t != null);
    const xs = pts.map((p) => p.t);
    const chart = (id, series, cols) => {
      const el = document.getElementById(id);
      new uPlot({
        width: widthOf(el), height: 200, scales: { x: { time: true } },
        series: [{}, ...series.map((s, i) => ({ label: s, stroke: colour(i), width: 1.5, spanGaps: true }))],
      }, [xs, ...cols], el);
    };
    chart("p-throughput", ["items/s"], [pts.map((p) => p.throughput)]);
    chart("p-latency", ["p50", "p95"], [pts.map((p) => p.p50), pts.map((p) => p.p95)]);
    document.body.dataset.chartsDrawn = "1";
  }

  // --- a model: which version answered which share of traffic when ---------------
  function drawTraffic(data) {
    const el = document.getElementById("traffic");
    const t = data.traffic;
    if (!el || !t) return;
    new uPlot({
      width: widthOf(el), height: 220,
      scales: { x: { time: true }, y: { range: [0, 100] } },
      axes: [{}, { label: "share of traffic", values: (u, splits) => splits.map((v) => v + "%") }],
      series: [{}, ...t.series.map((s, i) => ({
        label: s.label, stroke: colour(i), fill: colour(i) + "22", width: 1.5,
        paths: uPlot.paths.stepped({ align: 1 }), points: { show: false },
        value: (u, v) => (v == null ? "-" : `${v}%`),
      }))],
    }, [t.x, ...t.series.map((s) => s.values)], el);
    el.dataset.series = String(t.series.length);
    document.body.dataset.trafficDrawn = "1";
  }

  const page = document.body.dataset.page;
  const data = pageData();
  if (page === "run") drawTimeline(data).catch((e) => { console.error(e); });
  else if (page === "live") watchLive(data);  // an ended run: its last snapshots, then "end"
  else if (page === "pipeline") drawPipeline(data);
  else if (page === "model") drawTraffic(data);
})();
