-- One schema per service in the `shieldx` database (compose runs this on the first start of PostgreSQL).
-- Each server uses the schema named after its service (SHIELDX_DATABASE_SCHEMA to choose another).
CREATE SCHEMA IF NOT EXISTS tokens;
CREATE SCHEMA IF NOT EXISTS credits;
CREATE SCHEMA IF NOT EXISTS deployment;
CREATE SCHEMA IF NOT EXISTS sharding;
CREATE SCHEMA IF NOT EXISTS compliance;
CREATE SCHEMA IF NOT EXISTS deception;
