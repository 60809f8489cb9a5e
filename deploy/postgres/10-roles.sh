#!/bin/sh
# First start of the database container: the owner role that runs the migrations and creates
# the least-privilege roles (`sobriety db roles`: CREATEROLE, which on PostgreSQL 16 and later
# lets it manage only the roles it created). Its password comes from a Docker secret, never
# from the repository.
set -eu
password=$(cat /run/secrets/sobriety_db_password)
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE sobriety LOGIN CREATEROLE PASSWORD '$password';
CREATE DATABASE sobriety OWNER sobriety;
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname sobriety \
  -c "CREATE EXTENSION IF NOT EXISTS timescaledb"
