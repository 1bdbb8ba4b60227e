"""One textfile directory shared by processes: the lock, the merge, and one module per protocol.

``textfile`` is the store's API (read, merge, hand over, start a deployment); ``transaction`` runs each merge over
its participants, in the order that is the ordering rule; ``lock`` is the lock and every policy of waiting for it;
``files`` and ``fs`` the file on disk and the no-follow operations on a checked directory; ``rules`` and
``changes`` how pending changes meet the file's values. One module per protocol: ``markers``, ``process_identity``,
``inflight`` and ``deployments`` (deployments in flight), ``handovers``, ``handover_codec`` and ``handover_order``
(the events a busy lock kept out), ``lifecycle``, ``selection``, ``series_times`` and ``migration`` (forgetting,
expiry, the series bound, new buckets). ``process`` holds what the store keeps per process, and every fork and
exit hook of the store. Nothing here imports the layers above it (recorder/, serve/, cli/) nor Fraisier's
catalogue: the families and the markers' rules are handed to the store as data."""
