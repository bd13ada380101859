-- Run once by the postgres image, when its data volume is empty: one database per stateful
-- service (ingest is stateless). The migrations are applied by the `init` service.
CREATE DATABASE crm_profile;
CREATE DATABASE crm_loyalty;
CREATE DATABASE crm_notify;
