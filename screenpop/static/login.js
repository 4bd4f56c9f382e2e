// The login form: POST /agent/login as JSON, then load the desk (the session is an HttpOnly cookie).
"use strict";

(() => {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  const submit = document.getElementById("login-submit");

  function showError(text) {
    error.textContent = text;
    error.hidden = false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    const body = {
      agent_id: form.elements.agent_id.value.trim(),
      password: form.elements.password.value,
    };
    try {
      const response = await fetch("login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        credentials: "same-origin",
      });
      if (response.ok) {
        window.location.replace(window.location.pathname);
        return;
      }
      showError(
        response.status === 401
          ? "Unknown agent or wrong password (after repeated failures: wait a few minutes)."
          : `Login failed (${response.status}).`,
      );
    } catch (err) {
      showError("The service cannot be reached; try again.");
    } finally {
      submit.disabled = false;
    }
  });
})();
