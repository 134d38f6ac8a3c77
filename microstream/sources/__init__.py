"""Where records enter a pipeline: the `Source` contract (`base`), data in memory (`memory`), files (`files`),
polled device files (`device`), generated readings (`synthetic`) and MQTT (`mqtt`)."""
