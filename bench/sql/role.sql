-- The application role every system logs in as (a plain role: RLS applies to it). Its
-- password is set separately, from stdin, so it never appears on a command line.
\set ON_ERROR_STOP on
CREATE ROLE api_user LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;
