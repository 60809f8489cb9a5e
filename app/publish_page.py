"""The page of ``sobriety publish`` (``index.html``, in French): a title with the commune's name
and, for each indicator, its latest figures, a chart (SVG) with its text alternative and the
table of its data — all drawn in the browser, by the small inline script below, from the CSV
files beside the page (fetched relatively: no external library, no request to another host, a
Content-Security-Policy that allows none). Numbers are written as French readers write them
(``Intl.NumberFormat('fr-FR')``); a figure not known reads "donnée indisponible", never 0."""

from __future__ import annotations

import json
from datetime import datetime
from html import escape

from app.publish import Publication, Spec

__all__ = ["UNIT_LABELS", "render_page"]

UNIT_LABELS = {"m3": "m³", "m3/km/j": "m³/km/j", "kg CO2e": "kg CO₂e", "EUR": "€"}
"""How the page writes the units of the schemas."""

_CSP = (
    "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data:"
)

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:0 auto;padding:1rem;color:#1e1e1e}
h1{font-size:1.7rem}h2{margin-top:2.5rem;border-bottom:2px solid #000091}
.latest dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}
.latest dd{margin:0;font-weight:bold}.latest dt{color:#3a3a3a}
svg{width:100%;height:auto;max-width:44rem}svg text{font-size:11px;fill:#3a3a3a}
.mark rect{fill:#000091}.mark.missing text{fill:#b34000}.mark circle{fill:#000091}
.series-1 circle{fill:#b34000}.series-2 circle{fill:#18753c}.series-3 circle{fill:#6e445a}
polyline{fill:none;stroke:#000091;stroke-width:2}.series-1 polyline{stroke:#b34000}
.series-2 polyline{stroke:#18753c}.series-3 polyline{stroke:#6e445a}
span.series-0{color:#000091}span.series-1{color:#b34000}span.series-2{color:#18753c}
span.series-3{color:#6e445a}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.2rem .4rem;text-align:right}th[scope=col]{text-align:center}
.error{color:#b34000}footer{margin-top:3rem;font-size:.9rem;color:#3a3a3a}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const specs = JSON.parse(document.getElementById("indicators").textContent);
  const units = JSON.parse(document.getElementById("units").textContent);
  const NA = "donnée indisponible";
  const formats = {};
  function fmt(v, digits) {
    if (!formats[digits]) {
      formats[digits] = new Intl.NumberFormat("fr-FR",
        {minimumFractionDigits: digits, maximumFractionDigits: digits});
    }
    return formats[digits].format(v);
  }
  const monthFormat = new Intl.DateTimeFormat("fr-FR",
    {month: "long", year: "numeric", timeZone: "UTC"});
  function monthLabel(text) {
    const parts = text.split("-").map(Number);
    return monthFormat.format(new Date(Date.UTC(parts[0], parts[1] - 1, 1)));
  }
  function esc(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;"}[c];
    });
  }
  function parseCsv(text) {
    const rows = [];
    let row = [], cell = "", quoted = false;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (quoted) {
        if (c === "\"" && text[i + 1] === "\"") { cell += c; i++; }
        else if (c === "\"") quoted = false;
        else cell += c;
      } else if (c === "\"") quoted = true;
      else if (c === ",") { row.push(cell); cell = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i++;
        row.push(cell); rows.push(row); row = []; cell = "";
      } else cell += c;
    }
    if (cell !== "" || row.length) { row.push(cell); rows.push(row); }
    return rows.filter(function (r) { return r.length > 1 || r[0] !== ""; });
  }
  function typed(field, cell) {
    if (cell === undefined || cell === "") return null;
    if (field.type === "number" || field.type === "integer") return Number(cell);
    if (field.type === "boolean") return cell === "true";
    return cell;
  }
  function show(field, v, row) {
    if (v === null) {
      return row && row.withheld && field.type === "number" ? "non publié (secret statistique)"
        : NA;
    }
    if (field.type === "number" || field.type === "integer") {
      return fmt(v, field.shown) + (field.unit ? "\u00a0" + (units[field.unit] || field.unit) : "");
    }
    if (field.type === "boolean") return v ? "oui" : "non";
    if (field.type === "yearmonth") return monthLabel(v);
    return v;
  }
  function seriesName(row) { return row.dma_name || row.dma; }
  function chart(spec, rows) {
    const field = spec.fields.find(function (f) { return f.name === spec.chart; });
    const W = 640, H = 240, L = 70, B = 40, T = 16, R = 10;
    const values = rows.map(function (r) { return r[spec.chart]; })
      .filter(function (v) { return v !== null; });
    const high = Math.max(0, ...values), low = Math.min(0, ...values);
    const span = high - low || 1;
    const y = function (v) { return T + (H - T - B) * (high - v) / span; };
    const months = [...new Set(rows.map(function (r) { return r.month; }))];
    const step = (W - L - R) / Math.max(1, months.length);
    const x = function (m) { return L + step * months.indexOf(m) + step / 2; };
    const id = spec.name;
    let desc = [], marks = [], lines = [];
    const groups = spec.series ? [...new Set(rows.map(function (r) { return r[spec.series]; }))]
      : [null];
    groups.forEach(function (key, gi) {
      const mine = rows.filter(function (r) { return key === null || r[spec.series] === key; });
      const points = [];
      mine.forEach(function (r) {
        const label = (key === null ? "" : seriesName(r) + ", ") + monthLabel(r.month) + " : "
          + show(field, r[spec.chart], r);
        desc.push(label);
        const v = r[spec.chart];
        if (v === null) {
          marks.push("<g class=\"mark missing\" data-month=\"" + esc(r.month) + "\"><title>"
            + esc(label) + "</title><text x=\"" + x(r.month) + "\" y=\"" + (y(0) - 4)
            + "\" text-anchor=\"middle\">n.d.</text></g>");
        } else if (spec.series) {
          points.push(x(r.month) + "," + y(v));
          marks.push("<g class=\"mark series-" + (gi % 4) + "\" data-month=\"" + esc(r.month)
            + "\"><circle cx=\"" + x(r.month) + "\" cy=\"" + y(v) + "\" r=\"4\"></circle><title>"
            + esc(label) + "</title></g>");
        } else {
          const top = Math.min(y(v), y(0)), h = Math.max(1, Math.abs(y(v) - y(0)));
          marks.push("<g class=\"mark\" data-month=\"" + esc(r.month) + "\"><rect x=\""
            + (x(r.month) - step * 0.35) + "\" y=\"" + top + "\" width=\"" + step * 0.7
            + "\" height=\"" + h + "\"></rect><title>" + esc(label) + "</title></g>");
        }
      });
      if (points.length > 1) {
        lines.push("<g class=\"series-" + (gi % 4) + "\"><polyline points=\"" + points.join(" ")
          + "\"></polyline></g>");
      }
    });
    const every = Math.ceil(months.length / 12);
    const axis = months.map(function (m, i) {
      return i % every ? "" : "<text x=\"" + x(m) + "\" y=\"" + (H - B + 16)
        + "\" text-anchor=\"middle\">" + esc(monthLabel(m).replace(" ", "\u00a0")) + "</text>";
    }).join("");
    const scale = "<text x=\"" + (L - 6) + "\" y=\"" + (y(high) + 4) + "\" text-anchor=\"end\">"
      + esc(show(field, high)) + "</text><text x=\"" + (L - 6) + "\" y=\"" + (y(0) + 4)
      + "\" text-anchor=\"end\">" + esc(show(field, 0)) + "</text><line x1=\"" + L
      + "\" x2=\"" + (W - R) + "\" y1=\"" + y(0) + "\" y2=\"" + y(0) + "\" stroke=\"#666\"></line>";
    const legend = spec.series ? "<p>" + groups.map(function (k, gi) {
      const r = rows.find(function (row) { return row[spec.series] === k; });
      return "<span class=\"series-" + (gi % 4) + "\">● " + esc(seriesName(r)) + "</span>";
    }).join(" · ") + "</p>" : "";
    return "<svg role=\"img\" viewBox=\"0 0 " + W + " " + H + "\" aria-labelledby=\"t-" + id
      + " d-" + id + "\" data-rows=\"" + rows.length + "\"><title id=\"t-" + id + "\">"
      + esc(spec.title + " : " + field.title) + "</title><desc id=\"d-" + id + "\">"
      + esc(desc.join(" ; ")) + "</desc>" + scale + axis + lines.join("") + marks.join("")
      + "</svg>" + legend;
  }
  function latest(spec, rows) {
    if (!rows.length) return "<p>" + NA + "</p>";
    const last = rows[rows.length - 1].month;
    const mine = rows.filter(function (r) { return r.month === last; });
    let out = "<p>Dernier mois publié : <strong>" + esc(monthLabel(last)) + "</strong></p>";
    mine.forEach(function (r) {
      const key = spec.series ? r[spec.series] : null;
      const attr = key === null ? "" : " data-series=\"" + esc(key) + "\"";
      if (key !== null) out += "<h3>" + esc(seriesName(r)) + "</h3>";
      out += "<dl" + attr + ">" + spec.latest.map(function (name) {
        const f = spec.fields.find(function (g) { return g.name === name; });
        return "<dt>" + esc(f.title) + "</dt><dd data-field=\"" + name + "\"" + attr + ">"
          + esc(show(f, r[name], r)) + "</dd>";
      }).join("") + "</dl>";
    });
    return out;
  }
  function table(spec, rows) {
    const head = spec.fields.map(function (f) {
      return "<th scope=\"col\">" + esc(f.title) + (f.unit ? " (" + esc(units[f.unit] || f.unit)
        + ")" : "") + "</th>";
    }).join("");
    const body = rows.map(function (r) {
      return "<tr>" + spec.fields.map(function (f, i) {
        const v = f.unit ? show(f, r[f.name], r).replace("\u00a0" + (units[f.unit] || f.unit), "")
          : show(f, r[f.name], r);
        return i === 0 ? "<th scope=\"row\">" + esc(v) + "</th>" : "<td>" + esc(v) + "</td>";
      }).join("") + "</tr>";
    }).join("");
    return "<table><caption>" + esc(spec.title) + "</caption><thead><tr>" + head
      + "</tr></thead><tbody>" + body + "</tbody></table>";
  }
  function render(spec) {
    const section = document.getElementById(spec.name);
    return fetch(spec.name + ".csv").then(function (response) {
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
      return response.text();
    }).then(function (text) {
      const cells = parseCsv(text);
      const header = cells[0];
      const rows = cells.slice(1).map(function (line) {
        const row = {};
        spec.fields.forEach(function (f) { row[f.name] = typed(f, line[header.indexOf(f.name)]); });
        return row;
      });
      section.querySelector(".latest").innerHTML = latest(spec, rows);
      section.querySelector(".chart").innerHTML = chart(spec, rows);
      section.querySelector(".table").innerHTML = table(spec, rows);
    }).catch(function (error) {
      section.querySelector(".latest").innerHTML = "<p class=\"error\">" + NA + " : le fichier "
        + esc(spec.name) + ".csv n'a pas pu être lu (" + esc(error.message) + ").</p>";
    });
  }
  Promise.all(specs.map(render)).then(function () { document.body.dataset.rendered = "true"; });
})();
"""


def _json_script(element_id: str, value: object) -> str:
    text = json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def _spec_json(spec: Spec) -> dict[str, object]:
    return {
        "name": spec.name,
        "title": spec.title,
        "chart": spec.chart,
        "latest": list(spec.latest),
        "series": spec.series,
        "fields": [
            {"name": f.name, "type": f.type, "title": f.title, "unit": f.unit, "shown": f.shown}
            for f in spec.fields
        ],
    }


def _section(spec: Spec) -> str:
    name = escape(spec.name)
    return f"""<section id="{name}" aria-labelledby="h-{name}">
<h2 id="h-{name}">{escape(spec.title)}</h2>
<p>{escape(spec.description)}</p>
<div class="latest" aria-live="polite"><p>Chargement des données…</p></div>
<figure><div class="chart"></div>
<figcaption>{escape(spec.title)}, par mois. Le texte du graphique le décrit en entier ; le tableau
ci-dessous donne toutes les valeurs.</figcaption></figure>
<details><summary>Tableau des données</summary><div class="table"></div></details>
<p class="files">Données : <a href="{name}.csv" download>{name}.csv</a> (CSV UTF-8) ·
schéma : <a href="{name}.schema.json">{name}.schema.json</a></p>
<noscript><p>Les graphiques demandent JavaScript ; les données restent lisibles dans le fichier
<a href="{name}.csv">{name}.csv</a>.</p></noscript>
</section>"""


def render_page(pub: Publication, created: datetime) -> str:
    """``index.html`` of a publication."""
    commune = escape(pub.name)
    last = pub.months[-1] if pub.months else pub.first
    sections = "\n".join(_section(i.spec) for i in pub.indicators)
    specs = [_spec_json(i.spec) for i in pub.indicators]
    return f"""<!DOCTYPE html>
<html lang="fr">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<link rel="icon" href="data:,">
<title>{commune} : éclairage public, eau potable et énergie</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>{commune} : éclairage public, eau potable et énergie</h1>
<p>Les indicateurs que publie {commune}, mois par mois, de {pub.first:%m/%Y} à {last:%m/%Y}
(heure locale). Ce sont des totaux de la commune, de ses groupes d'éclairage ou de ses secteurs
de distribution d'eau : aucune donnée personnelle, aucun chiffre d'un foyer.</p>
</header>
<main>
{sections}
</main>
<footer>
<p>Données ouvertes sous <strong>Licence Ouverte 2.0</strong> (etalab-2.0), source : {commune}.
Description des fichiers : <a href="datapackage.json">datapackage.json</a> (Table Schema).
Page produite le {created:%d/%m/%Y} par sobriety.</p>
</footer>
{_json_script("indicators", specs)}
{_json_script("units", UNIT_LABELS)}
<script>{_SCRIPT}</script>
</body>
</html>
"""
