"""One textfile directory shared by processes: the lock, the merge, and one module per protocol.

``textfile`` is the store (lock, load, merge, atomic replace); ``handovers`` the events a busy lock kept out;
``inflight`` the markers of deployments under way; ``lifecycle`` forgetting, expiry and the series bound."""
