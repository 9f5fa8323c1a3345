// orchd console: live updates from the event stream (/ui/events, the API's stream behind the
// console's session). Pages work without this file; it only keeps them current. Rows and
// sections are re-fetched from the server, which renders (and escapes) them: no HTML is
// built here from event data.
"use strict";

(function () {
  const DEBOUNCE_MS = 150;

  function announce(text) {
    const region = document.getElementById("announce");
    if (region) {
      region.textContent = text;
    }
  }

  function liveState(text) {
    const note = document.querySelector("[data-live-state]");
    if (note) {
      note.textContent = text;
    }
  }

  function debounced(fn) {
    const timers = new Map();
    return function (key) {
      clearTimeout(timers.get(key));
      timers.set(key, setTimeout(function () {
        timers.delete(key);
        fn(key);
      }, DEBOUNCE_MS));
    };
  }

  async function fetchText(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (response.status === 401 || response.redirected && response.url.includes("/ui/login")) {
      window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
      return null;
    }
    if (!response.ok) {
      return null;
    }
    return response.text();
  }

  function openStream(onEvent) {
    const after = document.body.dataset.after || "";
    const url = "/ui/events" + (after ? "?after=" + encodeURIComponent(after) : "");
    const source = new EventSource(url);
    source.addEventListener("open", function () { liveState("Updates live as processes change."); });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (a session that expired, too many streams): the browser will not retry.
        liveState("Live updates stopped: reload the page.");
        announce("Live updates stopped: reload the page.");
      } else {
        liveState("Live updates paused: reconnecting…");
      }
    });
    source.addEventListener("reset", function () { window.location.reload(); });
    ["process", "step"].forEach(function (kind) {
      source.addEventListener(kind, function (message) {
        let data;
        try {
          data = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        onEvent(data);
      });
    });
    return source;
  }

  // -- the process list ----------------------------------------------------------------------

  function liveList(table) {
    const body = table.tBodies[0];
    const filter = table.dataset;
    const refresh = debounced(async function (id) {
      const html = await fetchText("/ui/processes/" + encodeURIComponent(id) + "/row");
      if (html === null) {
        return;
      }
      const holder = document.createElement("tbody");
      holder.innerHTML = html.trim();
      const fresh = holder.querySelector("tr");
      if (!fresh) {
        return;
      }
      const old = body.querySelector('tr[data-id="' + CSS.escape(id) + '"]');
      if (filter.status && fresh.dataset.status !== filter.status) {
        if (old) {
          old.remove();
        }
        return;
      }
      if (old) {
        if (old.dataset.status !== fresh.dataset.status) {
          announce(describe(fresh));
        }
        old.replaceWith(fresh);
      } else {
        body.prepend(fresh);
        announce("New: " + describe(fresh));
        const empty = document.getElementById("no-processes");
        if (empty) {
          empty.remove();
        }
      }
      fresh.classList.add("fresh");
    });

    openStream(function (event) {
      if (filter.workflow && event.workflow !== filter.workflow) {
        return;
      }
      if (filter.parent && event.parent_id !== filter.parent) {
        return;
      }
      if (filter.children !== "true" && event.parent_id) {
        return; // a child is listed on its parent's page, not among the top-level processes
      }
      const known = body.querySelector('tr[data-id="' + CSS.escape(event.process_id) + '"]');
      if (filter.q && !known) {
        return; // whether a new process matches the search is the server's to say: reload
      }
      if (filter.status && event.status !== filter.status) {
        if (known) {
          known.remove();
          announce("Process " + event.process_id.slice(0, 8) + " is now " + event.status);
        }
        return;
      }
      if (!known && filter.firstPage !== "true") {
        return; // a newer process belongs on the first page, not on this one
      }
      refresh(event.process_id);
    });
  }

  function describe(row) {
    const cells = row.querySelectorAll("td");
    const id = cells[0] ? cells[0].textContent.trim() : "";
    const workflow = cells[1] ? cells[1].textContent.trim() : "";
    return "process " + id + " (" + workflow + ") is " + row.dataset.status;
  }

  // -- one process ---------------------------------------------------------------------------

  function liveProcess(container) {
    const id = container.dataset.process;
    const refresh = debounced(async function () {
      const html = await fetchText("/ui/processes/" + encodeURIComponent(id));
      if (html === null) {
        return;
      }
      const doc = new DOMParser().parseFromString(html, "text/html");
      const next = doc.getElementById("process");
      const current = document.getElementById("process");
      if (!next || !current) {
        return;
      }
      if (next.dataset.status !== current.dataset.status) {
        // The allowed actions changed too: take the whole page body of the process.
        current.replaceWith(document.importNode(next, true));
        announce("The process is now " + next.dataset.status);
        return;
      }
      // Same status: keep the action forms (the operator may be typing), refresh the rest.
      next.querySelectorAll("[data-refresh]").forEach(function (section) {
        if (section.dataset.refresh === "status") {
          return;
        }
        const old = document.getElementById(section.id);
        if (old) {
          old.replaceWith(document.importNode(section, true));
        }
      });
    });
    openStream(function (event) {
      if (event.process_id === id || event.parent_id === id) {
        refresh(id);
      }
    });
  }

  // Forms that cannot be undone (abort) ask first. Delegated, so forms that a live refresh
  // brings in ask too.
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  // An action's outcome is shown once (post/redirect/get): the address loses its ?done= and
  // ?flash=, so a reload or a bookmark shows the page as it is, not the message again.
  function forgetOutcome() {
    const url = new URL(window.location.href);
    if (url.searchParams.has("done") || url.searchParams.has("flash")) {
      url.searchParams.delete("done");
      url.searchParams.delete("flash");
      window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    forgetOutcome();
    // After a refused form, start where the first problem is.
    const invalid = document.querySelector('[aria-invalid="true"]');
    if (invalid) {
      invalid.focus();
    }
    if (!("EventSource" in window)) {
      return;
    }
    const table = document.querySelector("table[data-live-list]");
    if (table) {
      liveList(table);
    }
    const process = document.querySelector("[data-process]");
    if (process) {
      liveProcess(process);
    }
  });
})();
