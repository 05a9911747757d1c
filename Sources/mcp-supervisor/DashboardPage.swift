/// The dashboard's one page: its style, its markup and its script, all
/// inline (the page loads nothing else; the Content-Security-Policy allows
/// exactly these two texts by their hashes). The script renders the state
/// object of `DashboardSource` and polls `/api/state` every 2 s; it builds
/// every element with `createElement`/`createElementNS` and sets text with
/// `textContent`, never markup from the data (tool names, details and
/// descriptions come from cells and clients), and draws the latency plots
/// as SVG elements.
enum DashboardPage {
    static let style = #"""
        :root { --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --muted: #57606a; --line: #d0d7de; --bg: #f6f8fa; }
        * { box-sizing: border-box; }
        body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
          background: #fff; }
        header { display: flex; align-items: baseline; gap: 16px; padding: 12px 24px; border-bottom: 1px solid var(--line);
          background: var(--bg); flex-wrap: wrap; }
        header h1 { font-size: 18px; margin: 0; }
        header .where { color: var(--muted); font-family: ui-monospace, monospace; font-size: 12px; }
        header .updated { margin-left: auto; color: var(--muted); font-size: 12px; }
        main { padding: 8px 24px 32px; max-width: 1400px; }
        h2 { font-size: 15px; margin: 24px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
        .banner { display: none; margin: 12px 24px 0; padding: 8px 12px; border: 1px solid var(--bad); color: var(--bad);
          border-radius: 6px; }
        .banner.shown { display: block; }
        .cards { display: flex; gap: 12px; flex-wrap: wrap; margin-top: 12px; }
        .card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 130px; }
        .card .n { font-size: 22px; font-weight: 600; }
        .card .l { color: var(--muted); font-size: 12px; }
        .ok { color: var(--ok); } .warn { color: var(--warn); } .bad { color: var(--bad); } .muted { color: var(--muted); }
        .badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
          border: 1px solid currentColor; }
        table { border-collapse: collapse; width: 100%; font-size: 13px; }
        th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
        th { background: var(--bg); font-weight: 600; }
        td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
        td.mono, span.mono { font-family: ui-monospace, monospace; font-size: 12px; }
        td.detail { color: var(--muted); max-width: 480px; overflow-wrap: anywhere; }
        .scroll { max-height: 420px; overflow-y: auto; border: 1px solid var(--line); border-radius: 6px; }
        .plots { display: flex; flex-wrap: wrap; gap: 16px; }
        .plot { border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
        .plot .t { font-weight: 600; } .plot .s { color: var(--muted); font-size: 12px; }
        .cells { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
        .cell { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
        .cell h3 { margin: 0 0 4px; font-size: 15px; }
        .cell dl { display: grid; grid-template-columns: 110px 1fr; gap: 2px 10px; margin: 8px 0 0; font-size: 13px; }
        .cell dt { color: var(--muted); } .cell dd { margin: 0; overflow-wrap: anywhere; }
        .lineage span { display: inline-block; margin-right: 4px; }
        .lineage .revoked { text-decoration: line-through; color: var(--bad); }
        .lineage .active { font-weight: 600; }
        .empty { color: var(--muted); font-style: italic; }
        """#

    static let body = #"""
        <header><h1>mcp-supervisor</h1><span class="where" id="where"></span>
        <span class="updated" id="updated"></span></header>
        <div class="banner" id="banner"></div>
        <main>
        <section class="cards" id="summary"></section>
        <h2>Security log</h2><div id="verification"></div>
        <h2>Recent calls</h2><div class="scroll"><table id="calls"><thead><tr><th>time</th><th>tool</th>
        <th>cell</th><th>outcome</th><th class="num">duration</th><th>call</th><th>detail</th></tr></thead><tbody></tbody>
        </table></div>
        <h2>Latency per tool</h2><div class="plots" id="latency"></div>
        <h2>Sandbox violations</h2><div class="scroll"><table id="violations"><thead><tr><th>time</th><th>cell</th>
        <th>tool</th><th>kind</th><th>what</th><th>call</th><th>detail</th></tr></thead><tbody></tbody></table></div>
        <h2>Cells</h2><div id="ledger"></div><div class="cells" id="cells"></div>
        <h2>Quarantined versions and breakers</h2><div id="quarantine"></div>
        <h2>Refusals</h2><div id="refusals"></div>
        <h2>Metrics file</h2><div id="metrics"></div>
        </main>
        """#

    static let script = #"""
        'use strict';
        (function () {
          const $ = (id) => document.getElementById(id);
          const SVG = 'http://www.w3.org/2000/svg';
          function el(tag, cls, ...children) {
            const e = document.createElement(tag);
            if (cls) e.className = cls;
            for (const c of children) {
              if (c === null || c === undefined) continue;
              e.append(c instanceof Node ? c : String(c));
            }
            return e;
          }
          function svg(tag, attrs, text) {
            const e = document.createElementNS(SVG, tag);
            for (const k in attrs) e.setAttribute(k, String(attrs[k]));
            if (text !== undefined) e.textContent = text;
            return e;
          }
          function ms(us) {
            if (us === null || us === undefined) return '–';
            const v = us / 1000;
            return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : Math.round(v).toString()) + ' ms';
          }
          function shortTime(iso) {
            if (!iso) return '';
            const d = new Date(iso);
            return isNaN(d) ? iso : d.toLocaleTimeString([], { hour12: false }) + '.' +
              String(d.getMilliseconds()).padStart(3, '0');
          }
          function outcomeClass(o) {
            if (o === 'success') return 'ok';
            if (o === 'tool_error' || o === 'refused' || o === 'cancelled') return 'warn';
            return 'bad';
          }
          const COLORS = { ok: '#1a7f37', warn: '#9a6700', bad: '#cf222e' };
          function card(n, label, cls) {
            return el('div', 'card', el('div', 'n ' + (cls || ''), n), el('div', 'l', label));
          }
          function sum(obj) { let s = 0; for (const k in obj || {}) s += obj[k]; return s; }
          function row(cells, attrs) {
            const tr = el('tr');
            for (const k in attrs || {}) tr.setAttribute(k, attrs[k]);
            for (const c of cells) tr.append(c instanceof Node ? c : el('td', null, c));
            return tr;
          }
          function td(text, cls) { return el('td', cls, text); }
          function counts(obj) {
            const keys = Object.keys(obj || {}).sort();
            if (!keys.length) return el('span', 'empty', 'none');
            return el('span', null, keys.map((k) => k + ' ' + obj[k]).join(' · '));
          }

          function render(s) {
            $('where').textContent = 'state ' + s.stateDirectory;
            $('updated').textContent = 'updated ' + shortTime(s.generatedAt);
            renderSummary(s);
            renderVerification(s);
            renderCalls(s.calls || []);
            renderLatency(s.latency || {});
            renderViolations(s.violations || []);
            renderCells(s.cells || {});
            renderQuarantine(s.quarantined || [], s.breakers || []);
            $('refusals').replaceChildren(counts((s.totals || {}).refusals));
            renderMetrics(s.metrics);
          }

          function renderSummary(s) {
            const t = s.totals || { tools: {}, refusals: {}, violations: {} };
            let calls = 0, ok = 0;
            for (const k in t.tools) { calls += t.tools[k].calls; ok += (t.tools[k].outcomes || {}).success || 0; }
            const v = s.verification;
            const cards = [
              card(calls, 'calls ended'),
              card(calls ? Math.round(100 * ok / calls) + '%' : '–', 'successful', ok === calls ? 'ok' : 'warn'),
              card(sum(t.refusals), 'refused', sum(t.refusals) ? 'warn' : ''),
              card(sum(t.violations), 'sandbox violations', sum(t.violations) ? 'bad' : ''),
              card((s.quarantined || []).length, 'quarantined versions', (s.quarantined || []).length ? 'bad' : ''),
              card(v ? (v.ok ? 'verified' : 'FAILED') : '–', 'security log', v ? (v.ok ? 'ok' : 'bad') : 'muted'),
            ];
            $('summary').replaceChildren(...cards);
          }

          function renderVerification(s) {
            const v = s.verification, log = s.log || {};
            const out = [];
            if (log.error) out.push(el('div', 'bad', log.error));
            if (v) {
              out.push(el('div', null, el('span', 'badge ' + (v.ok ? 'ok' : 'bad'), v.ok ? 'chain and signatures OK' :
                'VERIFICATION FAILED'), ' ', v.ok ? v.records + ' records in ' + v.files + ' file(s), chain intact ' +
                'through record ' + v.lastSeq + ', ' + v.checkpoints + ' signed checkpoint(s), keys ' +
                v.keyIds.join(', ') : v.problem));
              out.push(el('div', 'muted', 'checked ' + shortTime(v.checkedAt) + (v.recordsSince ?
                ' · ' + v.recordsSince + ' record(s) written since, checked again when the log has been quiet or ' +
                'after the re-check interval' : ' · nothing written since') +
                (v.unsignedTails ? ' · ' + v.unsignedTails + ' unsigned tail(s) recovered at a start' : '')));
            }
            out.push(el('div', 'muted', (log.records || 0) + ' records read from ' + (log.directory || '') +
              (log.lastTime ? ', last at ' + log.lastTime : '')));
            $('verification').replaceChildren(...out);
          }

          function renderCalls(calls) {
            const body = $('calls').tBodies[0];
            if (!calls.length) { body.replaceChildren(row([td('no calls recorded yet', 'empty')])); return; }
            body.replaceChildren(...calls.map((c) => row([
              td(shortTime(c.time), 'mono'), td(c.tool || '', 'mono'),
              td((c.cell || '') + (c.cellVersion ? ' ' + c.cellVersion : ''), 'mono'),
              el('td', null, el('span', outcomeClass(c.outcome), c.outcome + (c.reason ? ': ' + c.reason : ''))),
              td(ms(c.durationMicroseconds), 'num'), td(c.callId || '', 'mono'), td(c.detail || '', 'detail'),
            ], { 'data-seq': c.seq, 'data-call-id': c.callId || '', 'data-tool': c.tool || '',
              'data-outcome': c.outcome })));
          }

          function renderLatency(latency) {
            const tools = Object.keys(latency).sort();
            if (!tools.length) { $('latency').replaceChildren(el('span', 'empty', 'no calls recorded yet')); return; }
            $('latency').replaceChildren(...tools.map((t) => plot(t, latency[t])));
          }

          // Durations of the tool's recent calls in order, on a log scale
          // (a 1 ms call and a 3 s timeout on one plot), with p50 and p99.
          function plot(tool, l) {
            const W = 420, H = 170, L = 52, R = 10, T = 10, B = 24;
            const pts = l.points || [];
            const vals = pts.map((p) => Math.max(p[1], 1) / 1000);
            let lo = Math.min(...vals, l.p50Microseconds ? l.p50Microseconds / 1000 : Infinity);
            let hi = Math.max(...vals, l.p99Microseconds ? l.p99Microseconds / 1000 : 0);
            lo = Math.pow(10, Math.floor(Math.log10(Math.max(lo, 0.01))));
            hi = Math.pow(10, Math.ceil(Math.log10(Math.max(hi, lo * 10))));
            const y = (v) => T + (H - T - B) * (1 - (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)));
            const x = (i) => L + (pts.length <= 1 ? (W - L - R) / 2 : (W - L - R) * i / (pts.length - 1));
            const g = svg('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img',
              'aria-label': 'latency of ' + tool });
            for (let v = lo; v <= hi * 1.001; v *= 10) {
              g.append(svg('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: '#d0d7de', 'stroke-width': 1 }));
              g.append(svg('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#57606a' },
                v >= 1000 ? (v / 1000) + ' s' : v + ' ms'));
            }
            const line = pts.map((p, i) => (i ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(vals[i]).toFixed(1)).join(' ');
            if (pts.length > 1) g.append(svg('path', { d: line, fill: 'none', stroke: '#8c959f', 'stroke-width': 1 }));
            pts.forEach((p, i) => {
              const c = svg('circle', { cx: x(i), cy: y(vals[i]), r: 3, fill: COLORS[outcomeClass(p[2])] });
              c.append(svg('title', {}, shortTime(p[0]) + ' ' + p[2] + ' ' + ms(p[1])));
              g.append(c);
            });
            for (const [name, us, dash] of [['p50', l.p50Microseconds, '4 3'], ['p99', l.p99Microseconds, '1 3']]) {
              if (!us) continue;
              const yy = y(Math.max(us, 1) / 1000);
              g.append(svg('line', { x1: L, x2: W - R, y1: yy, y2: yy, stroke: '#0969da', 'stroke-dasharray': dash }));
              g.append(svg('text', { x: W - R - 2, y: yy - 3, 'text-anchor': 'end', 'font-size': 11, fill: '#0969da' },
                name));
            }
            g.append(svg('text', { x: L, y: H - 6, 'font-size': 11, fill: '#57606a' },
              'last ' + pts.length + ' call(s), oldest left'));
            return el('div', 'plot', el('div', 't', tool),
              el('div', 's', 'p50 ' + ms(l.p50Microseconds) + ' · p99 ' + ms(l.p99Microseconds)), g);
          }

          function renderViolations(vs) {
            const body = $('violations').tBodies[0];
            if (!vs.length) { body.replaceChildren(row([td('no sandbox violations recorded', 'empty')])); return; }
            body.replaceChildren(...vs.map((v) => {
              let what = v.kind === 'seccomp' ? 'syscall ' + (v.syscall === null ? '?' : v.syscall) +
                (v.architecture && v.architecture !== 'x86_64' ? ' (' + v.architecture + ')' : '') :
                v.kind === 'limit' ? 'limit ' + (v.limit || '?') : '';
              if (v.afterAnswer) what += ' (after the answer)';
              return row([td(shortTime(v.time), 'mono'), td((v.cell || '') + ' ' + (v.cellVersion || ''), 'mono'),
                td(v.tool || '', 'mono'), el('td', null, el('span', 'bad', v.kind || '?')), td(what, 'mono'),
                td(v.callId || '', 'mono'), td(v.detail || '', 'detail')],
                { 'data-seq': v.seq, 'data-call-id': v.callId || '' });
            }));
          }

          function renderCells(c) {
            const head = [el('span', 'muted', 'trust ledger ' + (c.ledger || '') + ' · ' + (c.entries || 0) +
              ' entries')];
            if (c.damaged) head.push(el('div', 'bad', 'LEDGER DAMAGED, every cell is refused: ' + c.damaged));
            $('ledger').replaceChildren(...head);
            const cells = c.cells || [];
            if (!cells.length) {
              $('cells').replaceChildren(el('span', 'empty', 'no cell registered (mcp-supervisor cell register)'));
              return;
            }
            $('cells').replaceChildren(...cells.map(cellCard));
          }

          function cellCard(c) {
            const versions = {};
            for (const v of c.versions || []) versions[v.id] = v;
            const active = c.active ? versions[c.active] : null;
            const box = el('div', 'cell');
            box.setAttribute('data-cell', c.cell);
            box.append(el('h3', null, c.cell + ' ', active ? el('span', 'mono', active.label) : null, ' ',
              c.refused ? el('span', 'badge bad', 'REFUSED') : el('span', 'badge ok', 'served')));
            if (c.description) box.append(el('div', 'muted', c.description));
            const dl = el('dl');
            const add = (k, v) => { dl.append(el('dt', null, k), v instanceof Node ? v : el('dd', null, v)); };
            if (c.refused) add('refused', el('dd', 'bad', c.refused));
            if (active) {
              add('version', el('dd', 'mono', active.id.slice(0, 16) + '… signed by ' + active.signedBy +
                ', registered ' + active.registeredAt + (active.approvedWidening ? ', widening approved' : '')));
            }
            const lin = el('dd', 'lineage');
            (c.lineage || []).forEach((id, i) => {
              const v = versions[id] || { label: '?' };
              if (i) lin.append(el('span', 'muted', '←'));
              lin.append(el('span', (v.revoked ? 'revoked' : '') + (id === c.active ? ' active' : ''),
                v.label + ' (' + id.slice(0, 8) + ')'));
            });
            add('lineage', lin);
            const others = (c.versions || []).filter((v) => !(c.lineage || []).includes(v.id));
            if (others.length) add('other versions', others.map((v) => v.label + (v.revoked ? ' (revoked)' : ''))
              .join(', '));
            if (c.tools) add('tools', el('dd', 'mono', c.tools.join(', ')));
            const p = c.permissions;
            if (p) {
              const list = (a) => a && a.length ? a.join(', ') : 'none';
              add('read', el('dd', 'mono', list(p.filesystem.read)));
              add('write', el('dd', 'mono', list(p.filesystem.write)));
              add('execute', el('dd', 'mono', list(p.filesystem.execute)));
              add('network', el('dd', 'mono', list(p.network)));
              add('syscalls', el('dd', 'mono', 'groups ' + list(p.syscallGroups) +
                (p.syscallAllow.length ? '; also ' + p.syscallAllow.join(', ') : '')));
              add('processes', p.processes + ' · side effects ' + p.sideEffects +
                (p.phases.length ? ' · phases ' + p.phases.join(', ') : ''));
              const l = p.limits;
              add('limits', l.timeoutMilliseconds + ' ms · ' + l.cpuSeconds + ' s CPU · ' + l.memoryMiB + ' MiB · ' +
                l.openFiles + ' files · output ' + l.outputKiB + ' KiB · scratch ' + l.scratchMiB + ' MiB');
            }
            if (c.error) add('error', el('dd', 'bad', c.error));
            box.append(dl);
            return box;
          }

          function renderQuarantine(q, breakers) {
            const out = [];
            if (!q.length) out.push(el('div', 'empty', 'no version quarantined'));
            for (const r of q) {
              out.push(el('div', null, el('span', 'badge bad', r.reason), ' ', el('span', 'mono', r.cell + ' ' +
                r.label + ' (' + r.versionId.slice(0, 12) + ')'), ' since ' + r.since +
                ' · release with mcp-supervisor cell release ' + r.cell, el('div', 'detail muted', r.difference)));
            }
            const open = breakers.filter((b) => b.state !== 'closed');
            out.push(el('div', open.length ? 'warn' : 'muted', open.length ? 'breakers not closed: ' +
              open.map((b) => b.cell + ' ' + b.cellVersion + ' ' + b.state + ' since ' + b.since).join('; ') :
              'every breaker closed'));
            $('quarantine').replaceChildren(...out);
          }

          function renderMetrics(m) {
            if (!m) {
              $('metrics').replaceChildren(el('span', 'empty', 'not given (dashboard --metrics-file FILE)'));
              return;
            }
            if (m.error) { $('metrics').replaceChildren(el('div', 'bad', m.file + ': ' + m.error)); return; }
            const t = el('table');
            t.append(el('thead', null, row([el('th', null, 'tool'), el('th', 'num', 'calls'), el('th', 'num', 'p50'),
              el('th', 'num', 'p99')])));
            const body = el('tbody');
            for (const r of m.tools || []) {
              body.append(row([td(r.tool, 'mono'), td(r.calls, 'num'),
                td(r.p50Seconds === null ? '–' : ms(r.p50Seconds * 1e6), 'num'),
                td(r.p99Seconds === null ? '–' : ms(r.p99Seconds * 1e6), 'num')]));
            }
            t.append(body);
            $('metrics').replaceChildren(el('div', 'muted', m.file + ', written ' +
              Math.round(m.ageSeconds || 0) + ' s ago · workers alive ' + m.workersAlive + ' · prespawn hits ' +
              m.prespawnHits + '/' + (m.prespawnHits + m.prespawnMisses) +
              (m.logSyncP99Seconds ? ' · log sync p99 ' + ms(m.logSyncP99Seconds * 1e6) : '')), t);
          }

          function banner(text) {
            $('banner').textContent = text;
            $('banner').className = text ? 'banner shown' : 'banner';
          }

          async function poll() {
            try {
              const r = await fetch('/api/state', { credentials: 'same-origin', cache: 'no-store' });
              if (r.status === 401) {
                banner('Not authorised: the dashboard was restarted (a new token is made at each start). ' +
                  'Open the URL it printed.');
              } else if (!r.ok) {
                banner('The dashboard server answered ' + r.status + '.');
              } else {
                render(await r.json());
                banner('');
              }
            } catch (e) {
              banner('The dashboard server cannot be reached (stopped?).');
            }
            setTimeout(poll, 2000);
          }

          render(JSON.parse($('initial-state').textContent));
          setTimeout(poll, 2000);
        })();
        """#
}
