-- PostHog's ClickHouse `events` table, as a self-hosted PostHog creates it.
--
-- Source: PostHog/posthog, posthog/models/event/sql.py at commit
-- 055f2c3c383aeb33dab89e232db0ab2e2d723fd8: EVENTS_TABLE_BASE_SQL formatted as
-- EVENTS_TABLE_SQL does it, with EVENTS_TABLE_MATERIALIZED_COLUMNS, the
-- property groups of posthog/clickhouse/property_groups.py, KAFKA_COLUMNS
-- (posthog/clickhouse/kafka_engine.py), INSERTED_AT_COLUMN,
-- index_by_kafka_timestamp (posthog/clickhouse/indexes.py) and
-- EVENTS_TABLE_INSERTED_AT_INDEX_SQL's index.
--
-- Simplified for a single node:
-- * PostHog keeps the rows in `sharded_events`, a ReplicatedReplacingMergeTree
--   ('/clickhouse/tables/{shard}/posthog.events', '{replica}', _timestamp),
--   and reads them through `events`, a Distributed table over it. Older
--   self-hosted installs without replication (commit cfd68dbc:
--   EVENTS_DATA_TABLE = "events" unless CLICKHOUSE_REPLICATION) created
--   `events` itself as the ReplacingMergeTree. Here `posthog.events` is that
--   plain ReplacingMergeTree(_timestamp), so there is no ON CLUSTER clause,
--   and the minmax index on _timestamp is named after `events`.
-- * No storage policy (PostHog adds one only with
--   CLICKHOUSE_ENABLE_STORAGE_POLICY).
-- * The table has no `_partition` column: PostHog adds it (KAFKA_COLUMNS_WITH_PARTITION)
--   only to events_recent, not to events.
-- The materialized columns are kept: `SELECT *` does not return them.
CREATE TABLE IF NOT EXISTS posthog.events
(
    uuid UUID,
    event VARCHAR,
    properties VARCHAR CODEC(ZSTD(3)),
    timestamp DateTime64(6, 'UTC'),
    team_id Int64,
    distinct_id VARCHAR,
    elements_chain VARCHAR,
    created_at DateTime64(6, 'UTC'),
    person_id UUID,
    person_created_at DateTime64,
    person_properties VARCHAR Codec(ZSTD(3)),
    group0_properties VARCHAR Codec(ZSTD(3)),
    group1_properties VARCHAR Codec(ZSTD(3)),
    group2_properties VARCHAR Codec(ZSTD(3)),
    group3_properties VARCHAR Codec(ZSTD(3)),
    group4_properties VARCHAR Codec(ZSTD(3)),
    group0_created_at DateTime64,
    group1_created_at DateTime64,
    group2_created_at DateTime64,
    group3_created_at DateTime64,
    group4_created_at DateTime64,
    person_mode Enum8('full' = 0, 'propertyless' = 1, 'force_upgrade' = 2)

    , $group_0 VARCHAR MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$group_0'), '^"|"$', '') COMMENT 'column_materializer::$group_0'
    , $group_1 VARCHAR MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$group_1'), '^"|"$', '') COMMENT 'column_materializer::$group_1'
    , $group_2 VARCHAR MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$group_2'), '^"|"$', '') COMMENT 'column_materializer::$group_2'
    , $group_3 VARCHAR MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$group_3'), '^"|"$', '') COMMENT 'column_materializer::$group_3'
    , $group_4 VARCHAR MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$group_4'), '^"|"$', '') COMMENT 'column_materializer::$group_4'
    , $window_id VARCHAR MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$window_id'), '^"|"$', '') COMMENT 'column_materializer::$window_id'
    , $session_id VARCHAR MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$session_id'), '^"|"$', '') COMMENT 'column_materializer::$session_id'
    , elements_chain_href String MATERIALIZED extract(elements_chain, '(?::|\")href="(.*?)"')
    , elements_chain_texts Array(String) MATERIALIZED arrayDistinct(extractAll(elements_chain, '(?::|\")text="(.*?)"'))
    , elements_chain_ids Array(String) MATERIALIZED arrayDistinct(extractAll(elements_chain, '(?::|\")attr_id="(.*?)"'))
    , elements_chain_elements Array(Enum('a', 'button', 'form', 'input', 'select', 'textarea', 'label')) MATERIALIZED arrayDistinct(extractAll(elements_chain, '(?:^|;)(a|button|form|input|select|textarea|label)(?:\\.|$|:)'))
    , INDEX `minmax_$group_0` `$group_0` TYPE minmax GRANULARITY 1
    , INDEX `minmax_$group_1` `$group_1` TYPE minmax GRANULARITY 1
    , INDEX `minmax_$group_2` `$group_2` TYPE minmax GRANULARITY 1
    , INDEX `minmax_$group_3` `$group_3` TYPE minmax GRANULARITY 1
    , INDEX `minmax_$group_4` `$group_4` TYPE minmax GRANULARITY 1
    , INDEX `minmax_$window_id` `$window_id` TYPE minmax GRANULARITY 1
    , INDEX `minmax_$session_id` `$session_id` TYPE minmax GRANULARITY 1
    , properties_group_custom Map(String, String)
        MATERIALIZED mapSort(mapFilter((key, _) -> key NOT LIKE '$%' AND key NOT IN ('token', 'distinct_id', 'utm_source', 'utm_medium', 'utm_campaign', 'utm_content', 'utm_term', 'gclid', 'gad_source', 'gclsrc', 'dclid', 'gbraid', 'wbraid', 'fbclid', 'msclkid', 'twclid', 'li_fat_id', 'mc_cid', 'igshid', 'ttclid', 'rdt_cid', 'epik', 'qclid', 'sccid', 'irclid', '_kx'),
            CAST(JSONExtractKeysAndValues(properties, 'String'), 'Map(String, String)')))
        CODEC(ZSTD(1))
    , INDEX properties_group_custom_keys_bf mapKeys(properties_group_custom) TYPE bloom_filter
    , INDEX properties_group_custom_values_bf mapValues(properties_group_custom) TYPE bloom_filter
    , properties_group_ai Map(String, String)
        MATERIALIZED mapSort(mapFilter((key, _) -> key LIKE '$ai_%' AND key != '$ai_input' AND key != '$ai_output_choices',
            CAST(JSONExtractKeysAndValues(properties, 'String'), 'Map(String, String)')))
        CODEC(ZSTD(1))
    , INDEX properties_group_ai_keys_bf mapKeys(properties_group_ai) TYPE bloom_filter
    , INDEX properties_group_ai_values_bf mapValues(properties_group_ai) TYPE bloom_filter
    , properties_group_feature_flags Map(String, String)
        MATERIALIZED mapSort(mapFilter((key, _) -> key like '$feature/%',
            CAST(JSONExtractKeysAndValues(properties, 'String'), 'Map(String, String)')))
        CODEC(ZSTD(1))
    , INDEX properties_group_feature_flags_keys_bf mapKeys(properties_group_feature_flags) TYPE bloom_filter
    , INDEX properties_group_feature_flags_values_bf mapValues(properties_group_feature_flags) TYPE bloom_filter
    , person_properties_map_custom Map(String, String)
        MATERIALIZED mapSort(mapFilter((key, _) -> key NOT LIKE '$%',
            CAST(JSONExtractKeysAndValues(person_properties, 'String'), 'Map(String, String)')))
        CODEC(ZSTD(1))
    , INDEX person_properties_map_custom_keys_bf mapKeys(person_properties_map_custom) TYPE bloom_filter
    , INDEX person_properties_map_custom_values_bf mapValues(person_properties_map_custom) TYPE bloom_filter

    , _timestamp DateTime
    , _offset UInt64
    , inserted_at Nullable(DateTime64(6, 'UTC')) DEFAULT NOW64()

    , INDEX kafka_timestamp_minmax_events _timestamp TYPE minmax GRANULARITY 3
    , INDEX `minmax_inserted_at` COALESCE(`inserted_at`, `_timestamp`) TYPE minmax GRANULARITY 1
) ENGINE = ReplacingMergeTree(_timestamp)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (team_id, toDate(timestamp), event, cityHash64(distinct_id), cityHash64(uuid))
SAMPLE BY cityHash64(distinct_id)
