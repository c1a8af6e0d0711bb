"""Raw volumes into the preprocessed store that training reads: the slice geometry shared with
prediction and its exact inverse, building a store in parallel (``volume``), and the store's
format on disk (``store``)."""
