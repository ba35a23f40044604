// The live mesh view: polls /api/v1/mesh and redraws the matrix. No inline code,
// nothing fetched from anywhere but this server (Content-Security-Policy: default-src 'self').
"use strict";

const API = "/api/v1/mesh";
let refreshMs = 2000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function ms(seconds) {
  return seconds === null || seconds === undefined ? "?" : `${(seconds * 1000).toFixed(1)} ms`;
}

function numbers(cell) {
  const parts = [];
  if (cell.counts) {
    const c = cell.counts;
    parts.push(`${c.nodes} nodes, ${c.endpoints} endpoints, ${c.identities} identities, ` +
               `${c.services} services, ${c.endpointslices} endpointslices, ` +
               `${c.failures} failures`);
  }
  if (cell.lag) {
    parts.push(`lag mean ${ms(cell.lag.meanSeconds)}, p99 ≤ ${cell.lag.p99Seconds === null ?
               "+Inf" : ms(cell.lag.p99Seconds)} (${cell.lag.count} changes)`);
  } else if (cell.rejections) {
    parts.push("lag: no change propagated yet");
  }
  if (cell.rejections) {
    const reasons = Object.entries(cell.rejections);
    parts.push(reasons.length ? "rejected: " + reasons.map(([r, n]) => `${r} ${n}`).join(", ")
                              : "0 rejected");
  }
  if (cell.heartbeatAgeSeconds !== null && cell.heartbeatAgeSeconds !== undefined) {
    parts.push(`heartbeat ${cell.heartbeatAgeSeconds.toFixed(1)} s ago`);
  }
  return parts;
}

function drawList(id, items, none) {
  const list = document.getElementById(id);
  list.replaceChildren(...(items.length ? items : [el("li", {class: "none"}, none)]));
}

function draw(snap) {
  refreshMs = Math.max(500, snap.refreshSeconds * 1000);
  const updated = document.getElementById("updated");
  updated.className = "";
  updated.textContent = `${snap.columns.length} clusters; snapshot of ${snap.generatedAt}, ` +
                        `refreshed every ${snap.refreshSeconds} s`;

  drawList("problems", snap.problems.map(p => el("li", {}, p.text)), "none");
  const expiring = snap.certificates.filter(c => c.expiring);
  drawList("certificates", expiring.map(c => el("li", {class: "expiring"},
    `${c.subject} (${c.role} for ${c.cluster}, seen by ${c.seenBy}): not after ` +
    `${c.notAfter}, ${c.daysLeft} days left`)),
    `none of ${snap.certificates.length} certificates reported by the KVStoreMesh ` +
    "metrics expires within 30 days");

  const head = document.getElementById("matrix-head");
  head.replaceChildren(el("th", {class: "corner"}, "source ↓ / cached in →"),
    ...snap.columns.map(c => el("th", {"data-column": c.name, "data-state": c.state,
                                       title: [c.detail, ...c.sources].join("\n")},
                                c.name, el("div", {class: "state"}, c.state))));
  const byKey = new Map(snap.cells.map(c => [`${c.source}\u0000${c.cachedIn}`, c]));
  const body = document.getElementById("matrix-body");
  body.replaceChildren(...snap.rows.map(row => el("tr", {"data-row": row},
    el("th", {}, row),
    ...snap.columns.map(col => {
      const cell = byKey.get(`${row}\u0000${col.name}`);
      const td = el("td", {"data-source": row, "data-cached-in": col.name,
                           "data-state": cell.state,
                           class: row === col.name ? "self" : "",
                           title: "from: " + cell.sources.join("\n")},
                    el("div", {class: "state"},
                       row === col.name ? `${cell.state} (the cluster itself)` : cell.state),
                    el("div", {class: "detail"}, cell.detail));
      for (const line of numbers(cell)) td.append(el("div", {class: "numbers"}, line));
      return td;
    }))));
}

async function poll() {
  try {
    const resp = await fetch(API, {cache: "no-store"});
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    draw(await resp.json());
  } catch (err) {
    const updated = document.getElementById("updated");
    updated.className = "stale";
    updated.textContent = `the dashboard server did not answer (${err.message}); ` +
                          "showing the last snapshot";
  }
  setTimeout(poll, refreshMs);
}

poll();
