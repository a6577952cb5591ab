-- Reverts 0001_registry.sql (`shieldx migrate down`): drops what it created, newest first.
DROP INDEX IF EXISTS fault_injections_by_age;
DROP INDEX IF EXISTS fault_injections_by_service;
DROP TABLE IF EXISTS fault_injections;
DROP TABLE IF EXISTS route_changes;
DROP TABLE IF EXISTS routes;
DROP TABLE IF EXISTS version_scales;
DROP INDEX IF EXISTS instances_by_version;
DROP TABLE IF EXISTS instances;
