-- Reverts 0002_deployments.sql (`shieldx migrate down`): drops what it created, newest first.
DROP TABLE IF EXISTS deployment_transitions;
DROP INDEX IF EXISTS deployments_by_service;
DROP INDEX IF EXISTS deployments_newest;
DROP INDEX IF EXISTS deployments_one_active;
DROP TABLE IF EXISTS deployments;
